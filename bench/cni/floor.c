/* The least any delegating CNI plugin costs, for bench/cni/run to measure next to `flannel`:
 * read the config from stdin, run $CNI_PATH/bridge with it (posix_spawn, stdin and stdout as
 * memory files, as flannel does), wait, and pass the delegate's stdout and exit status on.
 * No parsing, no state, no checks. VERSION prints an empty object. Built static, like the
 * plugin. Not a plugin: a yardstick. */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int main(void) {
  static char buf[1 << 20];
  const char *command = getenv("CNI_COMMAND");
  if (command && strcmp(command, "VERSION") == 0) {
    puts("{}");
    return 0;
  }
  ssize_t n = 0, r;
  while (n < (ssize_t)sizeof buf && (r = read(0, buf + n, sizeof buf - n)) > 0) n += r;
  int in = memfd_create("stdin", MFD_CLOEXEC), out = memfd_create("stdout", MFD_CLOEXEC);
  if (in < 0 || out < 0 || write(in, buf, n) != n || lseek(in, 0, SEEK_SET) != 0) return 1;
  char path[4096];
  snprintf(path, sizeof path, "%s/bridge", getenv("CNI_PATH") ? getenv("CNI_PATH") : ".");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in, 0);
  posix_spawn_file_actions_adddup2(&actions, out, 1);
  char *argv[] = {path, NULL};
  pid_t pid;
  int status;
  if (posix_spawn(&pid, path, &actions, NULL, argv, environ) != 0) return 1;
  if (waitpid(pid, &status, 0) != pid) return 1;
  n = pread(out, buf, sizeof buf, 0);
  if (n > 0 && write(1, buf, n) != n) return 1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
