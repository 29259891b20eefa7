/*
 * SegmentRoller: a Kafka-like log segment roller that runs the JVM into
 * vm.max_map_count and dies with the same error a Kafka broker dies with:
 *
 *     java.io.IOException: Map failed
 *         Caused by: java.lang.OutOfMemoryError: Map failed
 *
 * What it reproduces
 * ------------------
 * Kafka's log layer rolls a partition's log into segments. Each segment is a
 * "<20-digit base offset>.log" file (written through a FileChannel, never
 * mapped) plus a ".index" and a ".timeindex" file. Both index files are
 * preallocated to segment.index.bytes (10 MiB by default) with
 * RandomAccessFile.setLength, rounded down to a whole number of entries (8-byte
 * offset-index entries, 12-byte time-index entries), and mapped READ_WRITE for
 * their whole size. Kafka keeps every segment's index mapped (the active one
 * and, lazily, old ones), so every segment costs two VMAs and a broker with
 * many partitions and short segments runs into vm.max_map_count (65530 by
 * default): mmap fails with ENOMEM, FileChannelImpl.map calls System.gc(),
 * retries once, and then throws IOException("Map failed").
 *
 * This program does exactly that, round-robin over N partition directories
 * "<root>/topic-<p>/": for each segment it creates the .log file, creates and
 * sparsely preallocates the two index files (so disk use stays small: one
 * dirty page per index), maps each with FileChannel.map(READ_WRITE, 0, size),
 * writes one index entry into each mapping, closes the file and channel (the
 * mapping stays, as in Kafka) and keeps the MappedByteBuffer referenced
 * forever in a list.
 *
 * Usage
 * -----
 *   javac -d <dir> SegmentRoller.java
 *   java <jvm flags> -cp <dir> SegmentRoller --root <dir> [options]
 *
 *   --root <dir>          parent of the partition directories (required;
 *                         created if missing; the caller removes it)
 *   --partitions <n>      partitions to roll round-robin over      (default 50)
 *   --rate <n>            segments per second, paced on a fixed
 *                         System.nanoTime schedule (no sleep drift);
 *                         0 = as fast as possible                (default 2000)
 *   --pause-every <k>     pause after every k segments; 0 = never  (default 0)
 *   --pause-ms <ms>       length of each pause                   (default 2000)
 *   --index-bytes <n>     preallocated size of each index file
 *                         (Kafka segment.index.bytes)        (default 10485760)
 *   --max-segments <n>    stop after n segments (prints DONE and exits 0);
 *                         0 = keep going until mapping fails       (default 0)
 *
 * Protocol (stdout, one line per event, flushed; stdin for the start signal)
 * --------------------------------------------------------------------------
 *   READY pid=<pid>          printed at start-up, before anything is mapped.
 *                            The program then waits for a line "GO" on
 *                            stdin (so a tracer can attach first). EOF on
 *                            stdin before GO: exit status 2.
 *   PAUSE segments=<n>       a pause starts after n segments. During the pause
 *                            the program only sleeps: no mapping, no file or
 *                            heap activity, so the VMA count is stable.
 *   RESUME                   the pause ended; the rate schedule restarts from
 *                            now (no catch-up burst).
 *   DIED segments=<n> error=<exception class>: <message>
 *                            creating segment n+1 failed (normally
 *                            "java.io.IOException: Map failed"). The exception
 *                            is then rethrown out of main, so the JVM prints
 *                            the stack trace on stderr and exits by itself
 *                            with status 1, as a broker does. There are no
 *                            other non-daemon threads.
 *                            In practice (HotSpot 17) the stack trace is
 *                            printed, then the main thread's teardown needs
 *                            one more mmap (stack guard pages), which fails
 *                            too, and HotSpot aborts with "There is
 *                            insufficient memory for the Java Runtime
 *                            Environment to continue ... committing reserved
 *                            memory" (the classic hs_err of brokers that hit
 *                            the limit). Those "#" lines go to STDOUT, an
 *                            hs_err file is written, and the exit status is
 *                            still 1. Parsers must skip non-protocol lines.
 *   DONE segments=<n>        only with --max-segments; exit status 0.
 *   If the JVM itself fails natively first (e.g. cannot create a thread near
 *   the limit) it may die without a DIED line; watch the process exit.
 *
 * Mapped count: every segment adds exactly 2 VMAs (.index and .timeindex).
 * The kernel refuses mmap once map_count > vm.max_map_count, so at the
 * default 65530 the last successful mmap brings the count to 65531; measured
 * on Linux/JDK 17 with the flags below: 32681 segments, /proc/<pid>/maps at
 * 65532 lines (65531 VMAs + the [vsyscall] line, which is not a VMA).
 *
 * Where to put --root: a tmpfs (/dev/shm) or a fresh directory. On ext4,
 * creating files next to many recently deleted inodes (e.g. right after an
 * earlier run's rm -rf) costs ~0.5 ms per file and caps the rate at a few
 * hundred segments/s. Disk use is about 8 KiB per segment (~260 MiB at death).
 *
 * Recommended JVM flags (keep the JVM itself quiet, so VMA changes during the
 * pauses come only from this program, and its baseline small):
 *   -Xmx64m -Xms64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k
 *   -XX:-UsePerfData -XX:ErrorFile=<tmpdir>/hs_err_pid%p.log
 * (64 MiB heap is enough: the retained buffers take a few hundred bytes each.
 * Without -XX:ErrorFile the hs_err file lands in the working directory.)
 */

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.PrintStream;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.locks.LockSupport;

public final class SegmentRoller {
    /** Kafka's OffsetIndex entry: relative offset (int) + position (int). */
    private static final int OFFSET_ENTRY_BYTES = 8;
    /** Kafka's TimeIndex entry: timestamp (long) + relative offset (int). */
    private static final int TIME_ENTRY_BYTES = 12;
    /** Records per segment, only used to name segments by base offset. */
    private static final long RECORDS_PER_SEGMENT = 1000;

    /** Every mapping ever made, kept reachable forever (as Kafka does). */
    private static final List<MappedByteBuffer> MAPPED = new ArrayList<>();
    /** Zeroed scratch buffer for the first index entry (see mapIndex). */
    private static final ByteBuffer ENTRY = ByteBuffer.allocate(16);

    private SegmentRoller() {}

    public static void main(String[] args) throws Exception {
        String root = null;
        int partitions = 50;
        long rate = 2000;
        long pauseEvery = 0;
        long pauseMs = 2000;
        long indexBytes = 10L * 1024 * 1024;
        long maxSegments = 0;
        for (int i = 0; i < args.length; i++) {
            String name = args[i];
            if (i + 1 >= args.length) {
                usage("missing value for " + name);
            }
            String value = args[++i];
            switch (name) {
                case "--root": root = value; break;
                case "--partitions": partitions = Integer.parseInt(value); break;
                case "--rate": rate = Long.parseLong(value); break;
                case "--pause-every": pauseEvery = Long.parseLong(value); break;
                case "--pause-ms": pauseMs = Long.parseLong(value); break;
                case "--index-bytes": indexBytes = Long.parseLong(value); break;
                case "--max-segments": maxSegments = Long.parseLong(value); break;
                default: usage("unknown option " + name);
            }
        }
        if (root == null) {
            usage("--root is required");
        }
        if (partitions < 1 || rate < 0 || pauseEvery < 0 || pauseMs < 0
                || indexBytes < TIME_ENTRY_BYTES || maxSegments < 0) {
            usage("bad option value");
        }

        // Everything that allocates directories or per-partition state happens
        // before READY/GO, so the rolling loop only does per-segment work.
        File[] dirs = new File[partitions];
        long[] nextOffset = new long[partitions];
        for (int p = 0; p < partitions; p++) {
            dirs[p] = new File(root, "topic-" + p);
            if (!dirs[p].isDirectory() && !dirs[p].mkdirs()) {
                throw new IOException("cannot create " + dirs[p]);
            }
        }
        // Like Kafka: round the preallocated size down to whole entries.
        long offsetIndexSize = indexBytes / OFFSET_ENTRY_BYTES * OFFSET_ENTRY_BYTES;
        long timeIndexSize = indexBytes / TIME_ENTRY_BYTES * TIME_ENTRY_BYTES;

        // At the map limit any new VMA fails, including the JVM's own metaspace
        // commits. The uncaught-exception path (building and printing a stack
        // trace) loads classes lazily and would then crash the JVM natively
        // instead of printing the exception, so exercise it once up front.
        new IOException("Map failed", new OutOfMemoryError("Map failed"))
            .printStackTrace(new PrintStream(OutputStream.nullOutputStream()));
        Class.forName("java.lang.Shutdown");

        say("READY pid=" + ProcessHandle.current().pid());
        BufferedReader stdin = new BufferedReader(new InputStreamReader(System.in));
        for (;;) {
            String line = stdin.readLine();
            if (line == null) {
                System.err.println("SegmentRoller: stdin closed before GO");
                System.exit(2);
            }
            if (line.trim().equals("GO")) {
                break;
            }
        }

        // Fixed schedule: segment i (counted since the last (re)start) is due
        // at base + i * period, independent of how long each segment took.
        long periodNanos = rate == 0 ? 0 : 1_000_000_000L / rate;
        long base = System.nanoTime();
        long sinceBase = 0;
        long segments = 0;
        StringBuilder sb = new StringBuilder(128);
        while (maxSegments == 0 || segments < maxSegments) {
            if (periodNanos > 0) {
                long due = base + sinceBase * periodNanos;
                long wait;
                while ((wait = due - System.nanoTime()) > 0) {
                    LockSupport.parkNanos(wait);
                }
            }
            int p = (int) (segments % partitions);
            try {
                rollSegment(dirs[p], nextOffset[p], offsetIndexSize, timeIndexSize);
            } catch (Throwable t) {
                // Print without string concatenation bootstrap or formatting
                // machinery: we are at the map limit and want this line out.
                sb.setLength(0);
                sb.append("DIED segments=").append(segments)
                  .append(" error=").append(t.getClass().getName())
                  .append(": ").append(t.getMessage());
                say(sb.toString());
                throw t; // uncaught: the JVM exits with status 1 by itself
            }
            nextOffset[p] += RECORDS_PER_SEGMENT;
            segments++;
            sinceBase++;

            if (pauseEvery > 0 && segments % pauseEvery == 0) {
                sb.setLength(0);
                sb.append("PAUSE segments=").append(segments);
                say(sb.toString());
                Thread.sleep(pauseMs);
                say("RESUME");
                base = System.nanoTime();
                sinceBase = 0;
            }
        }
        sb.setLength(0);
        sb.append("DONE segments=").append(segments);
        say(sb.toString());
    }

    /** Creates one segment: .log (unmapped), .index and .timeindex (mapped). */
    private static void rollSegment(File dir, long baseOffset, long offsetIndexSize,
                                    long timeIndexSize) throws IOException {
        String name = segmentName(baseOffset);
        // The log file: Kafka appends to it through a FileChannel; never mapped.
        try (RandomAccessFile log = new RandomAccessFile(new File(dir, name + ".log"), "rw")) {
            log.setLength(0);
        }
        MappedByteBuffer index =
            mapIndex(new File(dir, name + ".index"), offsetIndexSize, OFFSET_ENTRY_BYTES);
        index.putInt(0);            // relative offset
        index.putInt(0);            // physical position in the .log
        MappedByteBuffer timeIndex =
            mapIndex(new File(dir, name + ".timeindex"), timeIndexSize, TIME_ENTRY_BYTES);
        timeIndex.putLong(System.currentTimeMillis());
        timeIndex.putInt(0);
    }

    /**
     * Preallocates (sparse) and maps an index file; the channel is closed, the
     * mapping stays. The first entry's bytes are written through the channel
     * before mapping so the page is already in the page cache: otherwise, on
     * ext4, the first store into a fresh sparse 10 MiB mapping takes a fault
     * that zero-fills a large readahead window (1-5 ms), which caps the rate
     * far below 2000 segments/s. The VMA pattern is the same either way.
     */
    private static MappedByteBuffer mapIndex(File file, long size, int entryBytes)
            throws IOException {
        try (RandomAccessFile raf = new RandomAccessFile(file, "rw")) {
            raf.setLength(size);
            FileChannel channel = raf.getChannel();
            ENTRY.clear().limit(entryBytes);
            channel.write(ENTRY, 0);
            MappedByteBuffer buf = channel.map(FileChannel.MapMode.READ_WRITE, 0, size);
            MAPPED.add(buf);
            return buf;
        }
    }

    /** Kafka's file name for a base offset: 20 digits, zero-padded. */
    private static String segmentName(long offset) {
        char[] digits = new char[20];
        for (int i = 19; i >= 0; i--) {
            digits[i] = (char) ('0' + offset % 10);
            offset /= 10;
        }
        return new String(digits);
    }

    private static void say(String line) {
        System.out.println(line);
        System.out.flush();
    }

    private static void usage(String problem) {
        System.err.println("SegmentRoller: " + problem);
        System.err.println("usage: SegmentRoller --root <dir> [--partitions n] [--rate segs/s]"
                + " [--pause-every k] [--pause-ms ms] [--index-bytes n] [--max-segments n]");
        System.exit(2);
    }
}
