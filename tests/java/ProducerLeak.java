/*
 * ProducerLeak: the memory side of the Kafka client bug "a KafkaProducer
 * created per message and never closed". Every leaked producer leaves a
 * network thread behind that holds native memory and lives forever, so the
 * process's thread count, native memory (RSS) and malloc arenas grow until
 * the memory cgroup's limit is hit and the kernel OOM-kills the JVM.
 *
 * What it reproduces
 * ------------------
 * A KafkaProducer is meant to be created once and shared. A classic
 * application bug creates one per message (or per request, per batch) and
 * never calls close(). Each KafkaProducer starts its Sender on a network
 * I/O thread named "kafka-producer-network-thread | <client.id>", where the
 * client.id defaults to "producer-<n>" (n = 1, 2, 3, ... from a JVM-wide
 * sequence). That thread owns a selector, sockets and buffers and never
 * exits, because nobody closes the producer. In production this shows up as
 * thousands of "kafka-producer-network-thread" threads in a thread dump,
 * steadily growing RSS (mostly native memory: thread stacks, direct buffers,
 * per-thread glibc malloc arenas), and finally the container's OOM kill.
 *
 * This program does the same with plain JDK threads:
 *   - A "producer" is one thread named
 *         "kafka-producer-network-thread | producer-<n>"
 *     (n = 1, 2, 3, ..., never reused). Linux truncates thread names to 15
 *     bytes, so /proc/<pid>/task/<tid>/comm shows "kafka-producer-" for all
 *     of them (the JVM sets the native name of every Java thread it starts;
 *     the main thread keeps "java").
 *   - In that new thread, the producer allocates one direct buffer of
 *     --buffer-kib KiB with ByteBuffer.allocateDirect. That is a native
 *     malloc (Unsafe.allocateMemory -> os::malloc -> glibc malloc) made by
 *     the new thread itself, so glibc gives the thread its own malloc arena
 *     (a new arena "heap": a 64 MiB, 64 MiB-aligned reservation, mostly
 *     PROT_NONE, of which only the part in use is read/write) as long as
 *     there are fewer arenas than glibc's limit (8 x CPUs by default,
 *     MALLOC_ARENA_MAX); after that threads share arenas. Note: the buffer
 *     itself is normally above glibc's mmap threshold (128 KiB unless the
 *     JVM's own frees have raised it), so glibc serves it with its own
 *     anonymous mmap of the buffer size plus one page; the arena is set up by
 *     the thread's first malloc regardless (the JVM's own per-thread
 *     mallocs usually get there first). With --buffer-kib below the
 *     threshold the buffer comes from the arena heap instead.
 *   - allocateDirect zeroes the buffer; the producer then also writes one
 *     byte to every 4 KiB page (and the last byte), so the whole buffer is
 *     certainly resident (RSS, charged to the memory cgroup).
 *   - The buffer is kept in a static list forever (never freed, never
 *     reachable by the Cleaner), and the thread then parks forever
 *     (LockSupport.park in a loop; jstack shows it WAITING (parking)).
 *     Producer threads are daemon threads.
 *   - Producers are created either in batches from the main thread (GROW)
 *     or continuously, at a given rate, by one application thread named
 *     "app-sender" (LEAK), the thread that in the real bug calls
 *     new KafkaProducer(...) for every message.
 *
 * Direct memory limit: by default the JVM caps direct buffers at the heap
 * size (-Xmx64m -> 64 MiB, i.e. about 30 producers of 2 MiB), after which
 * allocateDirect throws OutOfMemoryError("Direct buffer memory") instead of
 * the kernel OOM kill we want. The tests therefore pass
 *     -XX:MaxDirectMemorySize=4g
 * so that the memory cgroup limit is what stops the program. If an
 * allocation (or a thread start) fails anyway, the program says so on stderr
 * and exits with status 3.
 *
 * Under a memory cgroup limit (memory.max) the program is expected to be
 * OOM-killed (SIGKILL) by the kernel while growing; that is the point.
 *
 * Usage
 * -----
 *   javac -d <dir> ProducerLeak.java
 *   java <jvm flags> -XX:MaxDirectMemorySize=4g -cp <dir> ProducerLeak
 *        [--buffer-kib n]
 *
 *   --buffer-kib <n>   KiB of direct buffer allocated and touched by each
 *                      producer thread, n >= 1                (default 2048)
 *
 * Protocol (stdout, one line per event, flushed; commands on stdin, one per
 * line, surrounding blanks ignored, command words are case-sensitive)
 * ------------------------------------------------------------------------
 *   READY pid=<pid>  printed once at start-up; no producer exists yet.
 *   stdin "GROW <n>" -> GREW producers=<total>
 *                    creates n producers (n >= 0) from the main thread and
 *                    prints GREW once all n threads have started, allocated
 *                    and touched their buffers. <total> is the number of
 *                    producers that have done so by then, counting every
 *                    producer made so far (earlier GROWs and LEAK). Without
 *                    a concurrent LEAK, GROW a then GROW b print a and a+b.
 *                    stdin is not read while a GROW is in progress (later
 *                    commands wait, they are not lost).
 *   stdin "LEAK <per_second>"
 *                    starts (on first use) the "app-sender" thread, which
 *                    creates producers one at a time, about <per_second> of
 *                    them per second (a decimal number > 0, e.g. 20 or
 *                    0.5), until exit. After each of its producers has
 *                    started and touched its buffer it prints
 *                        PRODUCER <total>
 *                    <total> counted as for GREW (so with a concurrent GROW
 *                    the numbers can skip). The schedule is one producer per
 *                    1/<per_second> s; if creating one takes longer than
 *                    that, the next follows at once, with no catch-up burst
 *                    later. A further LEAK changes the rate from then on
 *                    (the next producer comes 1/<new rate> s after the
 *                    command at the latest); "LEAK 0" pauses app-sender.
 *   stdin "EXIT"     exit status 0 at once.
 *   EOF on stdin     exit status 0, as EXIT.
 *   Unknown commands and bad arguments are reported on stderr and ignored.
 *   Exit status 3 (message on stderr): a producer could not allocate its
 *   buffer or its thread could not be started.
 *
 * Threads to expect in /proc/<pid>/task/<tid>/comm: "java" (main), the
 * JVM's own threads (GC, compiler, "Reference Handl", "Finalizer", ...),
 * "app-sender" after the first LEAK, and one "kafka-producer-" per producer.
 *
 * Recommended JVM flags (small, quiet JVM):
 *   -Xmx64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData
 *   plus -XX:MaxDirectMemorySize=4g (see above).
 */

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;

public final class ProducerLeak {
    private static final int PAGE = 4096;

    /** Every producer's buffer, kept forever. Guarded by itself. */
    private static final List<ByteBuffer> BUFFERS = new ArrayList<>();
    /** Every producer thread, kept forever. Guarded by BUFFERS. */
    private static final List<Thread> THREADS = new ArrayList<>();

    // ---- counters, guarded by STATE ----
    private static final Object STATE = new Object();
    /** Last client-id sequence number handed out (Kafka's starts at 1). */
    private static long sequence;
    /** Producers whose threads have started and touched their buffers. */
    private static long ready;

    // ---- LEAK schedule, guarded by LEAK_LOCK ----
    private static final Object LEAK_LOCK = new Object();
    /** Producers per second; <= 0 = paused. */
    private static double leakRate;
    /** Bumped by every LEAK command so app-sender re-plans at once. */
    private static long leakEpoch;
    private static Thread sender;

    private static int bufferBytes;

    private ProducerLeak() {}

    public static void main(String[] args) throws Exception {
        long bufferKib = 2048;
        for (int i = 0; i < args.length; i++) {
            String name = args[i];
            if (i + 1 >= args.length) {
                usage("missing value for " + name);
            }
            String value = args[++i];
            switch (name) {
                case "--buffer-kib": bufferKib = parseLong(value); break;
                default: usage("unknown option " + name);
            }
        }
        if (bufferKib < 1 || bufferKib * 1024 > Integer.MAX_VALUE) {
            usage("bad option value");
        }
        bufferBytes = (int) (bufferKib * 1024);

        say("READY pid=" + ProcessHandle.current().pid());

        BufferedReader stdin = new BufferedReader(new InputStreamReader(System.in));
        for (;;) {
            String line = stdin.readLine();
            if (line == null) {
                System.exit(0);
            }
            String cmd = line.trim();
            if (cmd.isEmpty()) {
                continue;
            }
            String[] words = cmd.split("\\s+");
            switch (words[0]) {
                case "GROW":
                    grow(words);
                    break;
                case "LEAK":
                    leak(words);
                    break;
                case "EXIT":
                    System.exit(0);
                    break;
                default:
                    System.err.println("ProducerLeak: unknown command: " + cmd);
            }
        }
    }

    private static void grow(String[] words) throws InterruptedException {
        long n = words.length == 2 ? parseLong(words[1]) : -1;
        if (n < 0 || n > Integer.MAX_VALUE) {
            System.err.println("ProducerLeak: usage: GROW <n>, n >= 0");
            return;
        }
        CountDownLatch started = new CountDownLatch((int) n);
        for (long i = 0; i < n; i++) {
            startProducer(started);
        }
        started.await();
        synchronized (STATE) {
            say("GREW producers=" + ready);
        }
    }

    private static void leak(String[] words) {
        double rate = Double.NaN;
        if (words.length == 2) {
            try {
                rate = Double.parseDouble(words[1]);
            } catch (NumberFormatException e) {
                // reported below
            }
        }
        if (!(rate >= 0) || Double.isInfinite(rate)) {
            System.err.println("ProducerLeak: usage: LEAK <per_second>, a number >= 0");
            return;
        }
        synchronized (LEAK_LOCK) {
            leakRate = rate;
            leakEpoch++;
            LEAK_LOCK.notifyAll();
            if (sender == null && rate > 0) {
                sender = new Thread(ProducerLeak::senderLoop, "app-sender");
                sender.setDaemon(true);
                sender.start();
            }
        }
    }

    /** app-sender: one producer per 1/rate seconds, no catch-up bursts. */
    private static void senderLoop() {
        long next = System.nanoTime();
        long seenEpoch = -1;
        for (;;) {
            synchronized (LEAK_LOCK) {
                for (;;) {
                    if (leakEpoch != seenEpoch) {
                        // A (new) LEAK command: the next producer is due no
                        // later than one new interval from now.
                        seenEpoch = leakEpoch;
                        if (leakRate > 0) {
                            long latest = System.nanoTime() + intervalNanos(leakRate);
                            if (next - latest > 0) {
                                next = latest;
                            }
                        }
                    }
                    long now = System.nanoTime();
                    if (leakRate > 0 && next - now <= 0) {
                        next = now; // this slot starts now (late after a pause)
                        break;
                    }
                    try {
                        if (leakRate > 0) {
                            TimeUnit.NANOSECONDS.timedWait(LEAK_LOCK, next - now);
                        } else {
                            LEAK_LOCK.wait();
                        }
                    } catch (InterruptedException e) {
                        return; // nobody interrupts app-sender
                    }
                }
            }
            CountDownLatch started = new CountDownLatch(1);
            startProducer(started);
            try {
                started.await();
            } catch (InterruptedException e) {
                return;
            }
            synchronized (STATE) {
                say("PRODUCER " + ready);
            }
            long now = System.nanoTime();
            double rate;
            synchronized (LEAK_LOCK) {
                rate = leakRate;
            }
            if (rate > 0) {
                next += intervalNanos(rate);
            }
            if (next - now < 0) {
                next = now; // behind schedule: go on at once, but no burst
            }
        }
    }

    private static long intervalNanos(double perSecond) {
        double ns = 1e9 / perSecond;
        return ns >= Long.MAX_VALUE / 4 ? Long.MAX_VALUE / 4 : Math.max(1, (long) ns);
    }

    /** Starts one producer thread; it counts down `started` once it is resident. */
    private static void startProducer(CountDownLatch started) {
        long id;
        synchronized (STATE) {
            id = ++sequence;
        }
        Thread t = new Thread(() -> networkThread(started),
            "kafka-producer-network-thread | producer-" + id);
        t.setDaemon(true);
        try {
            t.start();
        } catch (Throwable e) { // OutOfMemoryError: unable to create native thread
            fail("cannot start the thread of producer-" + id + ": " + e);
        }
        synchronized (BUFFERS) {
            THREADS.add(t);
        }
    }

    /** The leaked producer's I/O thread: allocate, touch, keep, block forever. */
    private static void networkThread(CountDownLatch started) {
        ByteBuffer buf;
        try {
            buf = ByteBuffer.allocateDirect(bufferBytes); // native malloc, here
        } catch (Throwable e) { // OutOfMemoryError: Direct buffer memory
            fail(Thread.currentThread().getName() + ": allocateDirect(" + bufferBytes
                + ") failed: " + e + " (is -XX:MaxDirectMemorySize large enough?)");
            return;
        }
        for (int i = 0; i < bufferBytes; i += PAGE) {
            buf.put(i, (byte) 1);
        }
        buf.put(bufferBytes - 1, (byte) 1);
        synchronized (BUFFERS) {
            BUFFERS.add(buf);
        }
        synchronized (STATE) {
            ready++;
        }
        started.countDown();
        for (;;) {
            LockSupport.park(); // nobody ever unparks a leaked producer
        }
    }

    private static long parseLong(String s) {
        try {
            return Long.parseLong(s);
        } catch (NumberFormatException e) {
            return -1;
        }
    }

    private static void fail(String why) {
        System.err.println("ProducerLeak: " + why);
        System.err.flush();
        System.exit(3);
    }

    private static void usage(String why) {
        System.err.println("ProducerLeak: " + why);
        System.err.println("usage: ProducerLeak [--buffer-kib n]");
        System.exit(2);
    }

    private static void say(String line) {
        synchronized (System.out) {
            System.out.println(line);
            System.out.flush();
        }
    }
}
