/* Stands in for the nginx image critest runs: a master process named as nginx names it,
 * its pid in /var/run/nginx.pid, and a web server on port 80 (busybox httpd) as its child.
 * SIGTERM/SIGINT stop both. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *TITLE = "nginx: master process nginx -g daemon off;";
static pid_t server;

static void stop(int sig) {
  if (server > 0) kill(server, SIGTERM);
  _exit(sig == SIGTERM ? 0 : 1);
}

int main(int argc, char **argv) {
  (void)argc;
  if (strcmp(argv[0], TITLE) != 0) {
    char *again[] = {(char *)TITLE, NULL};
    execv("/proc/self/exe", again);
    perror("re-exec");
    return 1;
  }
  server = fork();
  if (server == 0) {
    char *httpd[] = {"httpd", "-f", "-v", "-p", "80", "-h", "/www", NULL};
    execv("/bin/busybox", httpd);
    perror("httpd");
    _exit(127);
  }
  FILE *pid = fopen("/var/run/nginx.pid", "w");
  if (pid) {
    fprintf(pid, "%d\n", getpid());
    fclose(pid);
  }
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  int status;
  while (waitpid(server, &status, 0) < 0) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
