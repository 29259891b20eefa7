/*
 * churn: threads that map, split (mprotect), merge and unmap memory as fast as they can, the
 * way a JVM's GC, JIT and thread stacks do all the time, while a slowly growing set of
 * mappings is kept. Used to check that tracer's VMA count follows the kernel exactly under
 * heavy concurrent churn.
 *
 * Usage: churn THREADS SECONDS
 * Protocol: prints "READY pid=<pid>", waits for "GO" on stdin, then churns. On "PAUSE" every
 * thread stops at a point where its mappings are stable and "PAUSED <ops>" is printed; on
 * "RESUME" they continue ("RESUMED"). "SPIKE N" (while paused) maps N pages, splits them into
 * about N mappings with mprotect, counts its mappings, unmaps them all in one call and prints
 * "SPIKED peak=<mappings at the top>": a peak that is gone well before the next report.
 * After SECONDS of churn it prints "DONE <ops>" and exits 0.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 64
#define KEEP_EVERY 64 /* every 64th round keeps one mapping: slow growth */

static atomic_int paused;       /* 1 while the driver wants the threads stopped */
static atomic_int parked;       /* threads currently parked */
static atomic_int stop;
static atomic_long ops;
static long page;

static void *worker(void *arg) {
    unsigned seed = (unsigned)(long)arg * 2654435761u;
    long round = 0;
    while (!atomic_load(&stop)) {
        if (atomic_load(&paused)) {
            atomic_fetch_add(&parked, 1);
            while (atomic_load(&paused) && !atomic_load(&stop))
                usleep(1000);
            atomic_fetch_sub(&parked, 1);
            continue;
        }
        size_t pages = 3 + rand_r(&seed) % 14;
        char *p = mmap(NULL, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            continue;
        p[0] = 1;
        /* Split into three VMAs, then merge back. */
        mprotect(p + page, page, PROT_READ);
        mprotect(p + page, page, PROT_READ | PROT_WRITE);
        /* Split off a guard page, as thread stacks have. */
        mprotect(p, page, PROT_NONE);
        if (++round % KEEP_EVERY == 0) {
            atomic_fetch_add(&ops, 1);
            continue; /* kept: two VMAs (guard + rest) */
        }
        munmap(p, pages * page);
        atomic_fetch_add(&ops, 1);
    }
    return NULL;
}

/* Lines of /proc/self/maps less [vsyscall]: mm->map_count, as tracer reports it. */
static long maps_lines(void) {
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps)
        return -1;
    long lines = 0;
    char text[512];
    while (fgets(text, sizeof text, maps))
        if (strchr(text, '\n') && !strstr(text, "[vsyscall]"))
            lines++;
    fclose(maps);
    return lines;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: churn THREADS SECONDS\n");
        return 2;
    }
    int threads = atoi(argv[1]);
    double seconds = atof(argv[2]);
    if (threads < 1 || threads > MAX_THREADS) {
        fprintf(stderr, "THREADS must be 1..%d\n", MAX_THREADS);
        return 2;
    }
    page = sysconf(_SC_PAGESIZE);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("READY pid=%d\n", getpid());

    char line[64];
    if (!fgets(line, sizeof line, stdin) || strncmp(line, "GO", 2) != 0)
        return 1;
    pthread_t tid[MAX_THREADS];
    for (long i = 0; i < threads; i++)
        pthread_create(&tid[i], NULL, worker, (void *)(i + 1));

    /* Commands arrive on stdin; the deadline is checked between them. */
    double deadline = now() + seconds;
    while (now() < deadline) {
        fd_set fds;
        FD_ZERO(&fds);
        FD_SET(0, &fds);
        struct timeval tv = {0, 100000};
        if (select(1, &fds, NULL, NULL, &tv) <= 0)
            continue;
        if (!fgets(line, sizeof line, stdin))
            break;
        if (strncmp(line, "PAUSE", 5) == 0) {
            atomic_store(&paused, 1);
            while (atomic_load(&parked) < threads)
                usleep(1000);
            printf("PAUSED %ld\n", atomic_load(&ops));
        } else if (strncmp(line, "SPIKE ", 6) == 0) {
            long n = atol(line + 6);
            char *spike = mmap(NULL, n * page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (spike == MAP_FAILED) {
                perror("mmap");
                return 1;
            }
            for (long i = 1; i < n; i += 2)
                mprotect(spike + i * page, page, PROT_READ | PROT_WRITE);
            long peak = maps_lines();
            munmap(spike, n * page);
            printf("SPIKED peak=%ld\n", peak);
        } else if (strncmp(line, "RESUME", 6) == 0) {
            atomic_store(&paused, 0);
            printf("RESUMED\n");
        }
    }
    atomic_store(&stop, 1);
    atomic_store(&paused, 0);
    for (int i = 0; i < threads; i++)
        pthread_join(tid[i], NULL);
    printf("DONE %ld\n", atomic_load(&ops));
    return 0;
}
