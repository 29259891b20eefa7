/*
 * twoports: a server accepting on two ports, like a broker with a healthy listener and a
 * stuck one. On the first port it closes each connection when the client does (EOF); on the
 * second it never reads or closes one, so those a client closes stay in CLOSE_WAIT.
 *
 * Usage: twoports   (both ports chosen by the kernel, 127.0.0.1, IPv4)
 * Protocol: prints "READY pid=<pid> port=<closing port> keep=<never-closing port>"; prints
 * "CLOSED <n>" whenever it has closed n connections of the first port in all and none is
 * pending, "KEPT <n>" whenever it holds n of the second and none is pending.
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static int listen_any(struct sockaddr_in *addr) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    *addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof *addr;
    if (bind(fd, (struct sockaddr *)addr, len) || listen(fd, 4096) ||
        getsockname(fd, (struct sockaddr *)addr, &len)) {
        perror("bind/listen");
        exit(1);
    }
    return fd;
}

int main(void) {
    struct rlimit nofile = {65536, 65536};
    setrlimit(RLIMIT_NOFILE, &nofile);
    struct sockaddr_in closing_addr, keeping_addr;
    int closing = listen_any(&closing_addr), keeping = listen_any(&keeping_addr);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = closing};
    epoll_ctl(ep, EPOLL_CTL_ADD, closing, &ev);
    ev.data.fd = keeping;
    epoll_ctl(ep, EPOLL_CTL_ADD, keeping, &ev);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY pid=%d port=%d keep=%d\n", getpid(), ntohs(closing_addr.sin_port),
           ntohs(keeping_addr.sin_port));
    long closed = 0, kept = 0, open_closing = 0;
    int reported = 1;
    struct epoll_event events[256];
    char buf[4096];
    for (;;) {
        int n = epoll_wait(ep, events, 256, reported ? -1 : 100);
        if (n == 0 && !reported) {
            /* Quiet for 100 ms: say where things stand. */
            if (open_closing == 0)
                printf("CLOSED %ld\n", closed);
            printf("KEPT %ld\n", kept);
            reported = 1;
            continue;
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            reported = 0;
            if (fd == closing || fd == keeping) {
                int conn;
                while ((conn = accept4(fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (fd == keeping) {
                        kept++;
                        continue;
                    }
                    open_closing++;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = conn};
                    epoll_ctl(ep, EPOLL_CTL_ADD, conn, &cev);
                }
                continue;
            }
            ssize_t got;
            while ((got = read(fd, buf, sizeof buf)) > 0) {
            }
            if (got == 0 || (events[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
                close(fd);
                closed++;
                open_closing--;
            }
        }
    }
}
