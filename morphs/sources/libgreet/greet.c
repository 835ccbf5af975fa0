#include "greet.h"

const char *greet_message(void)
{
    return "Hello from libgreet, built by distbuild!";
}

const char *greet_version(void)
{
    return "1.0";
}
