/* Stands in for the nonewprivs image: installed setuid root, it prints the effective uid
 * it runs with, which shows whether no_new_privs kept the setuid bit from taking effect. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
  printf("Effective uid: %d\n", (int)geteuid());
  return 0;
}
