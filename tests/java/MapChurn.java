/*
 * MapChurn: heavy, multi-threaded mmap/munmap churn done the way a JVM
 * application does it (FileChannel.map + explicit unmapping), plus a slowly
 * growing set of mappings that are never released. It exercises a VMA-count
 * tracer's bookkeeping under concurrency: the process's map count goes up and
 * down constantly while its floor creeps upward, and the program can be
 * frozen on request so the tracer's count can be compared with
 * /proc/<pid>/maps.
 *
 * What it does
 * ------------
 * A sparse scratch file (--file-mb, default 64 MiB) is created in --dir. Each
 * worker thread loops: map 1-16 pages at a random page-aligned offset of the
 * file with FileChannel.map(READ_WRITE), touch every page (one store per
 * page), then unmap it at once with sun.misc.Unsafe.invokeCleaner (reached by
 * reflection on Unsafe.theUnsafe; jdk.unsupported exports it, so no JVM flags
 * are needed on Java 17). One more thread (when --retain-per-sec > 0) maps one
 * region of 1-16 pages every 1/rate seconds and keeps it until exit. Every
 * mapping is released explicitly, so the garbage collector and the JDK's
 * Cleaner thread never unmap anything behind the program's back.
 *
 * Usage
 * -----
 *   javac -d <dir> MapChurn.java
 *   java <jvm flags> -cp <dir> MapChurn [--threads n] [--duration s]
 *        [--retain-per-sec n] [--dir path] [--file-mb n] [--seed n]
 *
 *   --threads <n>         churning worker threads                   (default 4)
 *   --duration <s>        seconds of running (unpaused) time before
 *                         it stops; time spent paused does not count (default 10)
 *   --retain-per-sec <n>  retained (never unmapped) mappings added per
 *                         second of running time; 0 = none          (default 10)
 *   --dir <path>          where the scratch file goes      (default java.io.tmpdir)
 *   --file-mb <n>         scratch file size in MiB (sparse)         (default 64)
 *   --seed <n>            random seed                               (default 1)
 *
 * Protocol (stdout lines are flushed one by one; commands come on stdin)
 * ----------------------------------------------------------------------
 *   READY pid=<pid>       printed at start-up; the scratch file exists but
 *                         nothing is mapped yet. The program then waits for
 *                         a line "GO" on stdin (EOF before GO: exit status 2).
 *   STATS maps_created=<n> unmapped=<n> retained=<n>
 *                         once per second of running time, cumulative:
 *                         maps_created counts every FileChannel.map call
 *                         (churned and retained), unmapped every
 *                         invokeCleaner call, retained the mappings kept.
 *                         Not printed while paused.
 *   stdin "PAUSE"  ->  PAUSED
 *                         every worker and the retainer stop at a safe point
 *                         (holding no transient mapping; only the retained
 *                         ones remain) and the program prints PAUSED once they
 *                         all have. Until RESUME the program makes no mapping
 *                         changes of its own and prints nothing, so
 *                         /proc/<pid>/maps is stable; the program's live
 *                         mappings are then exactly the retained ones
 *                         (maps_created - unmapped == retained). A second
 *                         PAUSE while paused is ignored. A PAUSE that races
 *                         with the end of --duration gets DONE, not PAUSED.
 *   stdin "RESUME" ->  RESUMED
 *                         threads continue; the retainer restarts its
 *                         schedule from now (no catch-up burst).
 *   DONE                  after --duration seconds of running time; a final
 *                         STATS line comes just before it. Exit status 0.
 *   EOF on stdin after GO is ignored (a pause in progress is ended).
 *
 * Recommended JVM flags (keep the JVM's own VMA changes rare, so a pause is
 * quiet):
 *   -Xmx64m -Xms64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k
 *   -XX:-UsePerfData
 */

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.RandomAccessFile;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.MethodType;
import java.lang.reflect.Field;
import java.nio.ByteBuffer;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.LockSupport;

public final class MapChurn {
    private static final int PAGE = 4096;
    private static final int MAX_PAGES = 16;

    private static final AtomicLong CREATED = new AtomicLong();
    private static final AtomicLong UNMAPPED = new AtomicLong();
    private static final AtomicLong RETAINED = new AtomicLong();
    /** Mappings kept until exit; only the retainer thread adds to it. */
    private static final List<MappedByteBuffer> KEPT = new ArrayList<>();

    /** sun.misc.Unsafe.invokeCleaner(ByteBuffer), bound to theUnsafe. */
    private static MethodHandle invokeCleaner;
    private static FileChannel channel;
    private static long filePages;

    private MapChurn() {}

    // ---- pause coordination -------------------------------------------------
    // Participants (workers + retainer) call checkpoint() between mappings.
    // While a pause is requested they register as parked and wait; the
    // controller prints PAUSED when all of them are parked.

    private static final Object LOCK = new Object();
    private static boolean pauseRequested;
    private static boolean stopRequested;
    private static int parked;
    private static int participants;
    /** Bumped on every RESUME so the retainer can restart its schedule. */
    private static long resumeEpoch;

    /** Returns false when the program is stopping. */
    private static boolean checkpoint() throws InterruptedException {
        synchronized (LOCK) {
            if (pauseRequested && !stopRequested) {
                parked++;
                LOCK.notifyAll();
                while (pauseRequested && !stopRequested) {
                    LOCK.wait();
                }
                parked--;
            }
            return !stopRequested;
        }
    }

    public static void main(String[] args) throws Throwable {
        int threads = 4;
        long durationSec = 10;
        long retainPerSec = 10;
        String dir = System.getProperty("java.io.tmpdir");
        long fileMb = 64;
        long seed = 1;
        for (int i = 0; i < args.length; i++) {
            String name = args[i];
            if (i + 1 >= args.length) {
                usage("missing value for " + name);
            }
            String value = args[++i];
            switch (name) {
                case "--threads": threads = Integer.parseInt(value); break;
                case "--duration": durationSec = Long.parseLong(value); break;
                case "--retain-per-sec": retainPerSec = Long.parseLong(value); break;
                case "--dir": dir = value; break;
                case "--file-mb": fileMb = Long.parseLong(value); break;
                case "--seed": seed = Long.parseLong(value); break;
                default: usage("unknown option " + name);
            }
        }
        if (threads < 1 || durationSec < 0 || retainPerSec < 0 || fileMb < 1) {
            usage("bad option value");
        }

        Class<?> unsafeClass = Class.forName("sun.misc.Unsafe");
        Field theUnsafe = unsafeClass.getDeclaredField("theUnsafe");
        theUnsafe.setAccessible(true);
        invokeCleaner = MethodHandles.lookup()
            .findVirtual(unsafeClass, "invokeCleaner",
                         MethodType.methodType(void.class, ByteBuffer.class))
            .bindTo(theUnsafe.get(null));

        File file = File.createTempFile("mapchurn", ".dat", new File(dir));
        file.deleteOnExit();
        RandomAccessFile raf = new RandomAccessFile(file, "rw");
        raf.setLength(fileMb * 1024 * 1024); // sparse
        channel = raf.getChannel();
        filePages = fileMb * 1024 * 1024 / PAGE;

        say("READY pid=" + ProcessHandle.current().pid());
        BufferedReader stdin = new BufferedReader(new InputStreamReader(System.in));
        for (;;) {
            String line = stdin.readLine();
            if (line == null) {
                System.err.println("MapChurn: stdin closed before GO");
                System.exit(2);
            }
            if (line.trim().equals("GO")) {
                break;
            }
        }

        SplittableRandom seeds = new SplittableRandom(seed);
        List<Thread> started = new ArrayList<>();
        participants = threads + (retainPerSec > 0 ? 1 : 0);
        for (int t = 0; t < threads; t++) {
            SplittableRandom rnd = seeds.split();
            started.add(start("churn-" + t, () -> churn(rnd)));
        }
        if (retainPerSec > 0) {
            SplittableRandom rnd = seeds.split();
            long period = 1_000_000_000L / retainPerSec;
            started.add(start("retainer", () -> retain(rnd, period)));
        }

        Thread commands = new Thread(() -> readCommands(stdin), "stdin");
        commands.setDaemon(true);
        commands.start();

        // Main thread: account running time, print STATS every running second.
        long runNanos = durationSec * 1_000_000_000L;
        long ran = 0;
        long nextStats = 1_000_000_000L;
        long last = System.nanoTime();
        while (ran < runNanos) {
            LockSupport.parkNanos(10_000_000L);
            long now = System.nanoTime();
            boolean paused;
            synchronized (LOCK) {
                paused = pauseRequested;
            }
            if (!paused) {
                ran += now - last;
                if (ran >= nextStats && ran < runNanos) {
                    printStats();
                    nextStats += 1_000_000_000L;
                }
            }
            last = now;
        }
        synchronized (LOCK) {
            stopRequested = true;
            LOCK.notifyAll();
        }
        for (Thread t : started) {
            t.join();
        }
        printStats();
        say("DONE");
        System.exit(0); // the scratch file is removed by deleteOnExit
    }

    private static Thread start(String name, ThrowingRunnable body) {
        Thread t = new Thread(() -> {
            try {
                body.run();
            } catch (Throwable e) {
                e.printStackTrace();
                System.exit(3);
            }
        }, name);
        t.start();
        return t;
    }

    private interface ThrowingRunnable {
        void run() throws Throwable;
    }

    /** Maps 1-16 pages at a random page-aligned offset and touches each page. */
    private static MappedByteBuffer mapRandom(SplittableRandom rnd) throws IOException {
        int pages = 1 + rnd.nextInt(MAX_PAGES);
        long first = rnd.nextLong(filePages - pages + 1);
        MappedByteBuffer buf =
            channel.map(FileChannel.MapMode.READ_WRITE, first * PAGE, (long) pages * PAGE);
        CREATED.incrementAndGet();
        for (int p = 0; p < pages; p++) {
            buf.put(p * PAGE, (byte) (buf.get(p * PAGE) + 1));
        }
        return buf;
    }

    /** Worker: map, touch, unmap, forever; safe point between iterations. */
    private static void churn(SplittableRandom rnd) throws Throwable {
        while (checkpoint()) {
            MappedByteBuffer buf = mapRandom(rnd);
            invokeCleaner.invokeExact((ByteBuffer) buf);
            UNMAPPED.incrementAndGet();
        }
    }

    /** Retainer: one kept mapping every period of running time. */
    private static void retain(SplittableRandom rnd, long period) throws Throwable {
        long epoch = -1;
        long base = 0;
        long done = 0;
        while (checkpoint()) {
            long e;
            synchronized (LOCK) {
                e = resumeEpoch;
            }
            if (e != epoch) { // first run or resumed: restart the schedule
                epoch = e;
                base = System.nanoTime();
                done = 0;
            }
            long wait = base + done * period - System.nanoTime();
            if (wait > 0) {
                // Short slices so a pause request is noticed quickly.
                LockSupport.parkNanos(Math.min(wait, 10_000_000L));
                continue;
            }
            KEPT.add(mapRandom(rnd));
            RETAINED.incrementAndGet();
            done++;
        }
    }

    /** stdin after GO: PAUSE / RESUME. */
    private static void readCommands(BufferedReader stdin) {
        try {
            String line;
            while ((line = stdin.readLine()) != null) {
                switch (line.trim()) {
                    case "PAUSE": pause(); break;
                    case "RESUME": resume(); break;
                    default: break;
                }
            }
        } catch (IOException | InterruptedException e) {
            // fall through: behave as on EOF
        }
        try {
            resume();
        } catch (RuntimeException e) {
            // ignore
        }
    }

    private static void pause() throws InterruptedException {
        synchronized (LOCK) {
            if (pauseRequested || stopRequested) {
                return;
            }
            pauseRequested = true;
            while (parked < participants && !stopRequested) {
                LOCK.wait();
            }
            if (stopRequested) {
                return;
            }
        }
        say("PAUSED");
    }

    private static void resume() {
        synchronized (LOCK) {
            if (!pauseRequested) {
                return;
            }
            pauseRequested = false;
            resumeEpoch++;
            LOCK.notifyAll();
        }
        say("RESUMED");
    }

    private static void printStats() {
        StringBuilder sb = new StringBuilder(96);
        sb.append("STATS maps_created=").append(CREATED.get())
          .append(" unmapped=").append(UNMAPPED.get())
          .append(" retained=").append(RETAINED.get());
        say(sb.toString());
    }

    private static synchronized void say(String line) {
        System.out.println(line);
        System.out.flush();
    }

    private static void usage(String problem) {
        System.err.println("MapChurn: " + problem);
        System.err.println("usage: MapChurn [--threads n] [--duration s] [--retain-per-sec n]"
                + " [--dir path] [--file-mb n] [--seed n]");
        System.exit(2);
    }
}
