/*
 * napper: two threads named "napper" that each sleep 1 ms and then work
 * 1 ms, over and over: half asleep when they have a CPU to themselves. Run at a low priority
 * beside a busy process on the same CPU, they wait for the CPU after every wakeup, and that
 * wait is not sleep: an idle ratio must count it as busy, as schedstat's run_delay does.
 *
 * Usage: napper SECONDS. Prints "READY pid=<pid>" once both threads run; exits after SECONDS.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Works 1 ms of this thread's own CPU time (not wall time: a wait for the CPU is no work). */
static void work(void) {
    struct timespec start, t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &start);
    do {
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    } while ((t.tv_sec - start.tv_sec) * 1e9 + (t.tv_nsec - start.tv_nsec) < 1e6);
}

static void *napper(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "napper");
    const struct timespec nap = {0, 1000000};
    for (;;) {
        nanosleep(&nap, NULL);
        work();
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: napper SECONDS\n");
        return 2;
    }
    double end = now() + atof(argv[1]);
    pthread_t threads[2];
    pthread_create(&threads[0], NULL, napper, NULL);
    pthread_create(&threads[1], NULL, napper, NULL);
    printf("READY pid=%d\n", getpid());
    fflush(stdout);
    while (now() < end)
        sleep(1);
    return 0;
}
