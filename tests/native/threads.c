/*
 * threads: a process whose thread count moves on command, as a leaking client pool's does:
 * threads start, block, and exit when told.
 *
 * Usage: threads
 * Protocol: prints "READY pid=<pid>"; on stdin "+N" starts N threads, "-N" makes N of them
 * exit (joined before the reply); after each it prints "THREADS <threads alive, main
 * included>". EOF exits.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_THREADS 1024

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int leave; /* how many threads are asked to exit */

static void *worker(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    while (leave == 0)
        pthread_cond_wait(&wake, &lock);
    leave--;
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(void) {
    static pthread_t tid[MAX_THREADS];
    int alive = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY pid=%d\n", getpid());
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        int n = atoi(line + 1);
        if (line[0] == '+') {
            for (; n > 0 && alive < MAX_THREADS; n--)
                if (pthread_create(&tid[alive], NULL, worker, NULL) == 0)
                    alive++;
        } else if (line[0] == '-') {
            if (n > alive)
                n = alive;
            pthread_mutex_lock(&lock);
            leave += n;
            pthread_cond_broadcast(&wake);
            pthread_mutex_unlock(&lock);
            /* Which threads leave is up to the scheduler: join until n are gone. */
            for (int gone = 0; gone < n;) {
                for (int i = 0; i < alive && gone < n; i++) {
                    if (pthread_tryjoin_np(tid[i], NULL) == 0) {
                        tid[i] = tid[--alive];
                        gone++;
                        i--;
                    }
                }
                usleep(1000);
            }
        }
        printf("THREADS %d\n", alive + 1);
    }
    return 0;
}
