/*
 * kafka.Kafka: a time-compressed Kafka log manager, so that a tracer sees a broker's VMA
 * count climb and then hold where retention bounds it, in seconds instead of days.
 *
 * It is started the way kafka-server-start.sh starts a broker, main class kafka.Kafka and
 * then the properties file (relative to the working directory) and --override pairs:
 *
 *   javac -d <dir> kafka/Kafka.java
 *   java -cp <dir> kafka.Kafka config/server.properties [--override key=value]...
 *
 * It reads log.dirs (the first dir), log.roll.ms, log.retention.ms and test.partitions (the
 * partitions of one topic "topic", directories <log.dir>/topic-<p>/). Like Kafka's log layer,
 * each segment is a <20-digit base offset>.log written through a channel (appended to once when
 * it rolls, so its mtime is its roll time), plus a .index and a .timeindex preallocated to
 * test.index.bytes and mapped READ_WRITE for as long as the segment lives: two VMAs per
 * segment. Every partition rolls every log.roll.ms, partition p at phase p/partitions of the
 * period (rolls spread out, as appends spread them out on a broker). Retention is checked
 * every 100 ms: a closed segment whose roll time is older than log.retention.ms is deleted
 * (both indexes unmapped with the JDK's cleaner, as Kafka does, then the three files removed),
 * so a partition holds retention/roll closed segments plus the active one.
 *
 * Protocol: prints "READY pid=<pid>" once every partition has its first segment mapped, then
 * waits for "GO" on stdin before rolling. Prints "HOLDING" when the first segment is deleted.
 * A failed map prints "DIED <exception>" and rethrows (exit status 1).
 */
package kafka;

import java.io.BufferedReader;
import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.RandomAccessFile;
import java.lang.reflect.Field;
import java.nio.ByteBuffer;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.util.ArrayDeque;
import java.util.Properties;

public final class Kafka {
    private static final long RECORDS_PER_SEGMENT = 1000;

    /** One live segment of a partition. */
    private static final class Segment {
        final long baseOffset;
        final MappedByteBuffer index;
        final MappedByteBuffer timeIndex;
        long rolledAt;

        Segment(long baseOffset, MappedByteBuffer index, MappedByteBuffer timeIndex) {
            this.baseOffset = baseOffset;
            this.index = index;
            this.timeIndex = timeIndex;
        }
    }

    private Kafka() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 1 || !args[0].endsWith(".properties")) {
            System.err.println("usage: kafka.Kafka server.properties [--override key=value]...");
            System.exit(2);
        }
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            props.load(in);
        }
        for (int i = 1; i + 1 < args.length; i += 2) {
            if (args[i].equals("--override")) {
                String[] kv = args[i + 1].split("=", 2);
                props.setProperty(kv[0], kv[1]);
            }
        }
        String logDir = props.getProperty("log.dirs", "/tmp/kafka-logs").split(",")[0].trim();
        long rollMs = Long.parseLong(props.getProperty("log.roll.ms", "3000"));
        long retentionMs = Long.parseLong(props.getProperty("log.retention.ms", "12000"));
        int partitions = Integer.parseInt(props.getProperty("test.partitions", "1000"));
        long indexBytes = Long.parseLong(props.getProperty("test.index.bytes", "65536"));

        Object unsafe = unsafe();
        File[] dirs = new File[partitions];
        @SuppressWarnings("unchecked")
        ArrayDeque<Segment>[] logs = new ArrayDeque[partitions];
        for (int p = 0; p < partitions; p++) {
            dirs[p] = new File(logDir, "topic-" + p);
            if (!dirs[p].isDirectory() && !dirs[p].mkdirs()) {
                throw new IOException("cannot create " + dirs[p]);
            }
            logs[p] = new ArrayDeque<>();
            logs[p].add(roll(dirs[p], 0, indexBytes));
        }
        say("READY pid=" + ProcessHandle.current().pid());
        BufferedReader stdin = new BufferedReader(new InputStreamReader(System.in));
        for (String line; !"GO".equals(line = stdin.readLine()); ) {
            if (line == null) {
                System.exit(2);
            }
        }

        long start = System.currentTimeMillis();
        long[] nextRoll = new long[partitions];
        for (int p = 0; p < partitions; p++) {
            nextRoll[p] = start + rollMs * (p + 1) / partitions;
        }
        boolean holding = false;
        for (;;) {
            long now = System.currentTimeMillis();
            for (int p = 0; p < partitions; p++) {
                if (now < nextRoll[p]) {
                    continue;
                }
                nextRoll[p] += rollMs;
                Segment active = logs[p].peekLast();
                close(dirs[p], active, now);
                try {
                    logs[p].add(roll(dirs[p], active.baseOffset + RECORDS_PER_SEGMENT, indexBytes));
                } catch (Throwable t) {
                    say("DIED " + t.getClass().getName() + ": " + t.getMessage());
                    throw t;
                }
            }
            for (int p = 0; p < partitions; p++) {
                Segment oldest = logs[p].peekFirst();
                while (oldest != logs[p].peekLast() && now - oldest.rolledAt > retentionMs) {
                    delete(unsafe, dirs[p], logs[p].pollFirst());
                    oldest = logs[p].peekFirst();
                    if (!holding) {
                        holding = true;
                        say("HOLDING");
                    }
                }
            }
            Thread.sleep(100);
        }
    }

    /** A new active segment at `baseOffset`: its .log, and both indexes mapped. */
    private static Segment roll(File dir, long baseOffset, long indexBytes) throws IOException {
        String name = String.format("%020d", baseOffset);
        new RandomAccessFile(new File(dir, name + ".log"), "rw").close();
        return new Segment(
            baseOffset,
            map(new File(dir, name + ".index"), indexBytes / 8 * 8),
            map(new File(dir, name + ".timeindex"), indexBytes / 12 * 12));
    }

    /** Closes the active segment: its last append, at its roll time. */
    private static void close(File dir, Segment segment, long now) throws IOException {
        String name = String.format("%020d", segment.baseOffset);
        try (RandomAccessFile log = new RandomAccessFile(new File(dir, name + ".log"), "rw")) {
            log.seek(log.length());
            log.write(new byte[64]);
        }
        segment.timeIndex.putLong(0, now);
        segment.rolledAt = now;
    }

    /** Deletes a segment past retention: unmap its indexes, remove its files. */
    private static void delete(Object unsafe, File dir, Segment segment) throws Exception {
        unsafe.getClass().getMethod("invokeCleaner", ByteBuffer.class).invoke(unsafe, segment.index);
        unsafe.getClass().getMethod("invokeCleaner", ByteBuffer.class)
            .invoke(unsafe, segment.timeIndex);
        String name = String.format("%020d", segment.baseOffset);
        for (String ext : new String[] {".log", ".index", ".timeindex"}) {
            new File(dir, name + ext).delete();
        }
    }

    private static MappedByteBuffer map(File file, long size) throws IOException {
        try (RandomAccessFile raf = new RandomAccessFile(file, "rw")) {
            raf.setLength(size);
            FileChannel channel = raf.getChannel();
            channel.write(ByteBuffer.allocate(8), 0);
            return channel.map(FileChannel.MapMode.READ_WRITE, 0, size);
        }
    }

    /** sun.misc.Unsafe, whose invokeCleaner unmaps a MappedByteBuffer (jdk.unsupported). */
    private static Object unsafe() throws Exception {
        Class<?> type = Class.forName("sun.misc.Unsafe");
        Field field = type.getDeclaredField("theUnsafe");
        field.setAccessible(true);
        return field.get(null);
    }

    private static void say(String line) {
        System.out.println(line);
        System.out.flush();
    }
}
