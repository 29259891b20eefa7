/*
 * acceptor: a server that accepts every connection and never reads or closes one, like a
 * broker whose request threads are all stuck, holding as many sockets as clients open.
 *
 * Usage: acceptor PORT [--no-accept]   (PORT 0 = any free port; listens on 0.0.0.0, IPv4)
 * Protocol: prints "READY pid=<pid> port=<port>"; prints "ACCEPTED <n>" after every 1,000th
 * connection and whenever the accept queue runs dry; "CLOSE" on stdin closes every accepted
 * socket and prints "CLOSED <n>"; EOF on stdin exits.
 * With --no-accept it never accepts: connections pile up in its accept queue (up to
 * net.core.somaxconn), sockets it owns without a file descriptor each, so one process can
 * have far more than its open-files limit.
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: acceptor PORT [--no-accept]\n");
        return 2;
    }
    int accepting = !(argc == 3 && strcmp(argv[2], "--no-accept") == 0);
    struct rlimit nofile = {1100000, 1100000};
    setrlimit(RLIMIT_NOFILE, &nofile);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 1 << 20)) {
        perror("bind/listen");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &len);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY pid=%d port=%d\n", getpid(), ntohs(addr.sin_port));

    size_t cap = 1024, n = 0;
    int *fds = malloc(cap * sizeof *fds);
    struct pollfd pfd[2] = {{.fd = accepting ? lfd : -1, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
    for (;;) {
        if (poll(pfd, 2, -1) < 0)
            continue;
        if (pfd[0].revents & POLLIN) {
            int fd;
            while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                if (n == cap)
                    fds = realloc(fds, (cap *= 2) * sizeof *fds);
                fds[n++] = fd;
                if (n % 1000 == 0)
                    printf("ACCEPTED %zu\n", n);
            }
            printf("ACCEPTED %zu\n", n);
        }
        if (pfd[1].revents & (POLLIN | POLLHUP)) {
            char line[64];
            if (!fgets(line, sizeof line, stdin))
                return 0;
            if (strncmp(line, "CLOSE", 5) == 0) {
                for (size_t i = 0; i < n; i++)
                    close(fds[i]);
                printf("CLOSED %zu\n", n);
                n = 0;
            }
        }
    }
}
