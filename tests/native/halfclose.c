/*
 * halfclose: a client that opens connections and then closes its side while the server keeps
 * its own open, leaving these sockets in FIN_WAIT2: the process is the side left waiting.
 *
 * Usage: halfclose HOST PORT COUNT   (HOST an IPv4 or IPv6 address)
 * Protocol: prints "READY pid=<pid>" once all COUNT connections are established; then, on
 * stdin: "SHUTDOWN" -> shutdown(SHUT_WR) on each (the fds stay open), "SHUTDOWN <n>";
 * "CLOSE" -> close() each (orphaned sockets), "CLOSED <n>"; EOF exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: halfclose HOST PORT COUNT\n");
        return 2;
    }
    struct rlimit nofile = {1100000, 1100000};
    setrlimit(RLIMIT_NOFILE, &nofile);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST}, *ai;
    if (getaddrinfo(argv[1], argv[2], &hints, &ai)) {
        fprintf(stderr, "bad address %s\n", argv[1]);
        return 2;
    }
    int count = atoi(argv[3]);
    int *fds = calloc(count, sizeof *fds);
    for (int i = 0; i < count; i++) {
        fds[i] = socket(ai->ai_family, SOCK_STREAM, 0);
        if (connect(fds[i], ai->ai_addr, ai->ai_addrlen)) {
            perror("connect");
            return 1;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY pid=%d\n", getpid());
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "SHUTDOWN", 8) == 0) {
            for (int i = 0; i < count; i++)
                shutdown(fds[i], SHUT_WR);
            printf("SHUTDOWN %d\n", count);
        } else if (strncmp(line, "CLOSE", 5) == 0) {
            for (int i = 0; i < count; i++)
                close(fds[i]);
            printf("CLOSED %d\n", count);
        }
    }
    return 0;
}
