/*
 * fdleak: a server that stops closing what it opens, until "Too many open files".
 *
 * Usage: fdleak LIMIT RATE [KIB]
 *   Sets its soft RLIMIT_NOFILE to LIMIT, prints "READY pid=<pid>", waits for "GO" on stdin,
 *   then opens /dev/null RATE times a second and never closes it, with KIB KiB of memory
 *   allocated and touched for each (a leaked connection's buffers; default 0). At the first
 *   EMFILE it prints "EMFILE open=<descriptors open>" and keeps them all until stdin closes.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: fdleak LIMIT RATE [KIB]\n");
        return 2;
    }
    struct rlimit limit;
    getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = strtoul(argv[1], NULL, 10);
    if (setrlimit(RLIMIT_NOFILE, &limit)) {
        fprintf(stderr, "setrlimit(RLIMIT_NOFILE, %s, hard %lu): %s\n", argv[1],
                (unsigned long)limit.rlim_max, strerror(errno));
        return 1;
    }
    double rate = atof(argv[2]);
    size_t bytes = argc == 4 ? strtoul(argv[3], NULL, 10) * 1024 : 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY pid=%d\n", getpid());
    char line[32];
    if (!fgets(line, sizeof line, stdin) || strncmp(line, "GO", 2) != 0)
        return 2;
    struct timespec pause = {0, (long)(1e9 / rate)};
    for (;;) {
        int fd = open("/dev/null", O_RDONLY);
        if (fd < 0 && errno == EMFILE)
            break;
        if (fd < 0) {
            perror("open");
            return 1;
        }
        if (bytes)
            memset(malloc(bytes), 1, bytes);
        nanosleep(&pause, NULL);
    }
    int open_fds = 0;
    for (int fd = 0; fd < (int)limit.rlim_cur; fd++)
        open_fds += fcntl(fd, F_GETFD) != -1;
    printf("EMFILE open=%d\n", open_fds);
    while (fgets(line, sizeof line, stdin))
        ;
    return 0;
}
