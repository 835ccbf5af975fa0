#include <stdio.h>
#include <string.h>
#include <greet.h>

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("hello 1.0 (libgreet %s)\n", greet_version());
        return 0;
    }
    printf("%s\n", greet_message());
    return 0;
}
