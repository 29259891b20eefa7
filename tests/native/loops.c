/*
 * loops: the workloads of `cargo xtask bench`, each a tight loop that counts its iterations.
 *
 * Usage: loops MODE SECONDS [RATE]
 *   null  getppid() in a loop: the cheapest syscall, to see what probes cost other processes
 *   mm    mmap 4 pages, mprotect the second (splitting the mapping), munmap: 3 syscalls that
 *         each change the VMA count, as a JVM does all the time
 *   tcp   connect to a loopback listener and close, while a thread accepts and closes: the
 *         life of a short client connection on both sides, in one process
 *   self  one thread connecting to its own loopback listener, accepting and closing both ends,
 *         as fast as it can: the load of issue 14, where nothing waits for another thread
 *   spawn start a thread that names itself (prctl PR_SET_NAME) and exits, and join it: a
 *         thread's whole life, for the task programs
 *   fault touches one new page per iteration of a 64-page mapping and drops them all with
 *         madvise(MADV_DONTNEED) every 64: a page fault per iteration, each of which takes the
 *         mmap lock on kernels before 6.4 (per-VMA locks came then)
 *   maps  holds RATE mappings (alternately read-only and inaccessible pages, so none merge)
 *         until stdin closes: a process near vm.max_map_count, for the /proc/PID/maps cost
 *   mmfull  the mm loop in a process that first takes 65,400 mappings as maps does: what
 *         reading /proc/PID/maps (proc mode) costs a process near vm.max_map_count
 *   idle  maps and unmaps a page ten times a second for SECONDS (no GO needed): the watched
 *         server at rest, while an unwatched loop measures what the probes cost others
 * RATE (iterations per second) paces the loop; without it, as fast as it goes.
 * Protocol: prints "READY pid=<pid>", waits for "GO" on stdin, runs SECONDS, prints
 * "RESULT iterations=<n> seconds=<s> rate=<iterations per second>" and exits.
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Maps 2n pages and makes every other one read-only: about 2n mappings that do not merge. */
static int hold(long n, long page) {
    char *base = mmap(NULL, 2 * n * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (long i = 0; i < n; i++)
        mprotect(base + 2 * i * page, page, PROT_READ);
    return 0;
}

static int listener;
static struct sockaddr_in addr;

static void *acceptor(void *arg) {
    (void)arg;
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd >= 0)
            close(fd);
    }
    return NULL;
}

static void *named(void *arg) {
    (void)arg;
    prctl(PR_SET_NAME, "loops-worker");
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: loops null|mm|mmfull|fault|tcp|self|spawn|maps|idle SECONDS [RATE]\n");
        return 2;
    }
    const char *mode = argv[1];
    double seconds = atof(argv[2]);
    double rate = argc > 3 ? atof(argv[3]) : 0;
    long page = sysconf(_SC_PAGESIZE);
    if (strcmp(mode, "tcp") == 0 || strcmp(mode, "self") == 0) {
        listener = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof addr;
        if (bind(listener, (struct sockaddr *)&addr, len) || listen(listener, 4096) ||
            getsockname(listener, (struct sockaddr *)&addr, &len)) {
            perror("listen");
            return 1;
        }
        if (mode[0] == 't') {
            pthread_t thread;
            pthread_create(&thread, NULL, acceptor, NULL);
        }
    } else if (strcmp(mode, "maps") == 0) {
        if (hold((long)rate, page))
            return 1;
        printf("READY pid=%d\n", getpid());
        fflush(stdout);
        char buf[64];
        while (fgets(buf, sizeof buf, stdin))
            ;
        return 0;
    } else if (strcmp(mode, "idle") == 0) {
        /* A server at rest: it touches its memory map ten times a second, as any running JVM
         * does, so a tracer watching it has learned which memory map is its. */
        printf("READY pid=%d\n", getpid());
        fflush(stdout);
        struct timespec tenth = {0, 100 * 1000 * 1000};
        for (double end = now() + seconds; now() < end; nanosleep(&tenth, NULL))
            munmap(mmap(NULL, page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), page);
        return 0;
    } else if (strcmp(mode, "mmfull") == 0) {
        if (hold(32700, page))
            return 1;
    } else if (strcmp(mode, "mm") != 0 && strcmp(mode, "null") != 0 &&
               strcmp(mode, "fault") != 0 && strcmp(mode, "spawn") != 0) {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    volatile char *pages = NULL;
    if (mode[0] == 'f') {
        pages = mmap(NULL, 64 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (pages == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
        /* One fault per page, not one per 2 MiB. */
        madvise((void *)pages, 64 * page, MADV_NOHUGEPAGE);
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY pid=%d\n", getpid());
    char line[32];
    if (!fgets(line, sizeof line, stdin) || strncmp(line, "GO", 2) != 0)
        return 2;

    long n = 0;
    double start = now(), end = start + seconds, t = start;
    while (t < end) {
        /* Check the clock every 64 iterations: cheap enough not to matter. */
        for (int i = 0; i < 64; i++, n++) {
            if (mode[0] == 'n') {
                getppid();
            } else if (mode[0] == 'f') {
                pages[i * page] = 1;
            } else if (mode[0] == 'm') {
                char *p = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                mprotect(p + page, page, PROT_READ);
                munmap(p, 4 * page);
            } else if (mode[0] == 's' && mode[1] == 'e') {
                int fd = socket(AF_INET, SOCK_STREAM, 0);
                /* Accept would wait for ever after a failed connect. */
                if (connect(fd, (struct sockaddr *)&addr, sizeof addr)) {
                    perror("connect");
                    return 1;
                }
                close(accept(listener, NULL, NULL));
                close(fd);
            } else if (mode[0] == 's') {
                pthread_t thread;
                pthread_create(&thread, NULL, named, NULL);
                pthread_join(thread, NULL);
            } else {
                int fd = socket(AF_INET, SOCK_STREAM, 0);
                connect(fd, (struct sockaddr *)&addr, sizeof addr);
                close(fd);
            }
        }
        if (pages)
            madvise((void *)pages, 64 * page, MADV_DONTNEED);
        t = now();
        if (rate > 0) {
            double due = start + n / rate;
            if (due > t) {
                struct timespec ts = {(time_t)(due - t), (long)((due - t - (time_t)(due - t)) * 1e9)};
                nanosleep(&ts, NULL);
                t = now();
            }
        }
    }
    printf("RESULT iterations=%ld seconds=%.6f rate=%.1f\n", n, t - start, n / (t - start));
    return 0;
}
