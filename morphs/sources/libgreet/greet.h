#ifndef GREET_H
#define GREET_H
/* The greeting every example program prints. */
const char *greet_message(void);
const char *greet_version(void);
#endif
