/*
 * listeners: a server listening on one port with three sockets: two IPv4 ones on 127.0.0.1
 * sharing it with SO_REUSEPORT, and an IPv6-only one on ::1. It accepts every connection and
 * never reads or closes one.
 *
 * Usage: listeners   (a free port, found by binding port 0 first)
 * Protocol: prints "READY pid=<pid> port=<port>"; prints "ACCEPTED <n>" whenever no
 * connection has arrived for 100 ms; "CLOSE" on stdin closes the first IPv4 listener (its
 * twin keeps the port) and prints "CLOSED"; EOF on stdin exits.
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int listener(int family, int port) {
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_storage ss = {0};
    socklen_t len;
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        *a = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        len = sizeof *a;
    } else {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        *a = (struct sockaddr_in6){.sin6_family = AF_INET6, .sin6_port = htons(port),
                                   .sin6_addr = in6addr_loopback};
        len = sizeof *a;
    }
    if (bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 4096)) {
        perror("bind/listen");
        _exit(1);
    }
    return fd;
}

int main(void) {
    /* A free port, then bound by number, as a server configured with its port is. */
    int probe = listener(AF_INET, 0);
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    getsockname(probe, (struct sockaddr *)&addr, &len);
    int port = ntohs(addr.sin_port);
    close(probe);
    int first = listener(AF_INET, port), twin = listener(AF_INET, port);
    int v6 = listener(AF_INET6, port);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY pid=%d port=%d\n", getpid(), port);
    struct pollfd pfd[4] = {{.fd = first, .events = POLLIN}, {.fd = twin, .events = POLLIN},
                            {.fd = v6, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
    long accepted = 0;
    int reported = 1;
    char line[64];
    for (;;) {
        int n = poll(pfd, 4, reported ? -1 : 100);
        if (n == 0) {
            printf("ACCEPTED %ld\n", accepted);
            reported = 1;
            continue;
        }
        for (int i = 0; i < 3; i++) {
            if (pfd[i].fd >= 0 && (pfd[i].revents & POLLIN)) {
                while (accept4(pfd[i].fd, NULL, NULL, 0) >= 0)
                    accepted++;
                reported = 0;
            }
        }
        if (pfd[3].revents & (POLLIN | POLLHUP)) {
            if (!fgets(line, sizeof line, stdin))
                return 0;
            if (strncmp(line, "CLOSE", 5) == 0) {
                close(first);
                pfd[0].fd = -1;
                printf("CLOSED\n");
            }
        }
    }
}
