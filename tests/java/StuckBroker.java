/*
 * StuckBroker: the network side of a deadlocked Kafka broker. It keeps
 * accepting TCP connections but never reads or closes them, so once the peers
 * close their end the broker's sockets sit in CLOSE_WAIT (half-closed socket
 * leak), until the deadlock is broken on request.
 *
 * What it reproduces
 * ------------------
 * A Kafka broker's acceptor thread accepts connections and its request
 * handler threads serve them. When the handler threads deadlock (the classic
 * cases are lock-ordering bugs between the log/partition locks and a
 * background thread such as the log cleaner), the acceptor, which takes no
 * such lock, keeps accepting; nobody reads or closes the accepted sockets;
 * clients time out and close their side (FIN), and every one of those broker
 * sockets stays in CLOSE_WAIT for as long as the broker lives.
 *
 * This program does the same with plain java.net sockets:
 *   - A ServerSocket is created with new ServerSocket() and bound to the
 *     wildcard address (new InetSocketAddress(port), backlog 50). On a host
 *     with IPv6 the JVM opens a dual-stack AF_INET6 socket, so IPv4 clients
 *     show up as IPv4-mapped IPv6 addresses: `ss -tanp` shows the server side
 *     as [::ffff:127.0.0.1]:<port>. (With -Djava.net.preferIPv4Stack=true or
 *     no IPv6 in the kernel the socket is plain AF_INET instead.)
 *   - The acceptor thread ("data-plane-kafka-socket-acceptor-...") accepts in
 *     a loop, keeps every accepted Socket in a list forever (an unreachable
 *     JDK 17 socket would be closed by its Cleaner at the next GC) and queues
 *     it for the handler pool.
 *   - --handlers request handler threads ("data-plane-kafka-request-handler-
 *     <i>") take connections from that queue.
 *   - Mode "stuck" (the default): a real lock-ordering deadlock. Handler i
 *     serving a connection first takes its own partition lock (a
 *     ReentrantLock, partitionLock[i]) and then the log lock (a Java monitor,
 *     synchronized). The log cleaner thread ("kafka-log-cleaner-thread-0")
 *     takes the log lock at start-up, before READY, and then wants the
 *     partition lock of the first handler that got a connection. So the first
 *     connection closes the cycle:
 *         handler i:    holds partitionLock[i], BLOCKED on the log lock
 *         log cleaner:  holds the log lock, WAITING (parked) on
 *                       partitionLock[i]
 *     and every other handler that gets a connection is BLOCKED on the log
 *     lock too (owner: the cleaner). `jstack <pid>` lists the handlers as
 *     "java.lang.Thread.State: BLOCKED (on object monitor)" and reports
 *     "Found one Java-level deadlock" (cleaner <-> first handler). Each
 *     handler thus blocks on its first connection; with more connections than
 *     handlers the rest wait in the queue. Nothing is ever read or closed.
 *   - Mode "healthy": no cleaner, no deadlock. A handler reads each connection
 *     until EOF (discarding the bytes) and then closes it (a control run: no
 *     socket should linger in CLOSE_WAIT beyond a handler's reaction time).
 *     With more simultaneously open clients than handlers the extra ones wait
 *     in the queue, unread, until a handler is free.
 *
 * Usage
 * -----
 *   javac -d <dir> StuckBroker.java
 *   java <jvm flags> -cp <dir> StuckBroker [--port n] [--handlers n]
 *        [--mode stuck|healthy]
 *
 *   --port <n>       TCP port to listen on, wildcard address;
 *                    0 = an ephemeral port (see READY)          (default 0)
 *   --handlers <n>   request handler threads (Kafka num.io.threads) (default 8)
 *   --mode <m>       "stuck" or "healthy", see above            (default stuck)
 *
 * Protocol (stdout, one line per event, flushed; commands on stdin, one per
 * line, surrounding blanks ignored)
 * ------------------------------------------------------------------------
 *   READY pid=<pid> port=<port>
 *                    printed once the socket is listening (and, in stuck
 *                    mode, once the cleaner holds the log lock). <port> is
 *                    the actual port (useful with --port 0).
 *   ACCEPTED <total> printed for every accepted connection, <total> being the
 *                    number accepted so far (1, 2, 3, ...). It is printed
 *                    right after accept() returns, so by the time a client
 *                    sees it the server socket exists (in stuck mode it is
 *                    never read or closed until RELEASE).
 *   stdin "RELEASE" -> CLOSED <n>
 *                    <n> = connections accepted so far. Stuck mode: the
 *                    deadlock is broken (the cleaner is interrupted out of
 *                    its lockInterruptibly, gives up and leaves the log lock;
 *                    the handlers get it in turn), and the handlers close
 *                    every socket accepted so far at once, without reading
 *                    it (also the ones still queued, and whether or not the
 *                    peer has closed). From then on the server behaves as in
 *                    healthy mode: new connections are read until EOF and
 *                    closed. CLOSED <n> is printed once all <n> sockets are
 *                    closed (at once if n = 0). Every ACCEPTED line up to <n>
 *                    comes before it; later connections only get ACCEPTED.
 *                    Healthy mode: nothing to break; CLOSED <n> is printed
 *                    once all sockets accepted so far are closed, i.e. once
 *                    their peers have closed (at once if they already have).
 *                    A second RELEASE is ignored (message on stderr).
 *   stdin "EXIT"     exit status 0 at once (sockets are closed by the kernel).
 *   EOF on stdin     exit status 0, as EXIT.
 *   Unknown commands are reported on stderr and ignored.
 *
 * TCP details worth knowing when checking with ss:
 *   - A client that closes first leaves the server socket in CLOSE-WAIT for
 *     good (while stuck); the client socket itself goes FIN-WAIT-2 and is
 *     dropped by the client's kernel after net.ipv4.tcp_fin_timeout (60 s).
 *   - Bytes a client sent are never read while stuck; ss shows them as
 *     Recv-Q (a CLOSE-WAIT socket with no data shows Recv-Q 1: the FIN).
 *   - The listener shows as *:<port> in ss (dual-stack), accepted IPv4
 *     connections as [::ffff:127.0.0.1]:<port>.
 *   - JDK 17's Socket.close() does shutdown(SHUT_WR) and then close(), so a
 *     client still connected at RELEASE reads EOF. The closed sockets leave
 *     the JVM at once: `ss -tanp | grep pid=<pid>` no longer lists them (a
 *     client that closed first ends in TIME-WAIT on its own side; a client
 *     still connected may leave an orphaned server-side FIN-WAIT-2 entry,
 *     without a pid, until it closes).
 *
 * Recommended JVM flags (small, quiet JVM):
 *   -Xmx64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData
 */

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.locks.ReentrantLock;

public final class StuckBroker {
    /** Kafka's default socket.listen.backlog.size. */
    private static final int BACKLOG = 50;

    /** One accepted connection. */
    private static final class Conn {
        final long seq;
        final Socket socket;
        boolean closed; // guarded by STATE

        Conn(long seq, Socket socket) {
            this.seq = seq;
            this.socket = socket;
        }
    }

    // ---- bookkeeping, all guarded by STATE ----
    private static final Object STATE = new Object();
    /** Every accepted connection, kept forever. */
    private static final List<Conn> ALL = new ArrayList<>();
    private static long accepted;
    private static long closedTotal;
    /** Connections accepted when RELEASE came; -1 before RELEASE. */
    private static long releaseN = -1;
    private static long closedOfReleased;

    /** Set (under STATE) when RELEASE arrives; read by handlers unlocked. */
    private static volatile boolean released;

    // ---- the deadlock (stuck mode) ----
    /** Kafka's per-log lock; a monitor so blocked threads show as BLOCKED. */
    private static final Object LOG_LOCK = new Object();
    /** The partition lock of the first handler that got a connection. */
    private static final AtomicReference<ReentrantLock> VICTIM = new AtomicReference<>();
    private static final CountDownLatch VICTIM_SET = new CountDownLatch(1);
    private static final CountDownLatch CLEANER_HOLDS_LOG = new CountDownLatch(1);
    /** Appends done, guarded by LOG_LOCK. */
    private static long appended;

    private static final BlockingQueue<Conn> QUEUE = new LinkedBlockingQueue<>();

    private StuckBroker() {}

    public static void main(String[] args) throws Exception {
        int port = 0;
        int handlers = 8;
        String mode = "stuck";
        for (int i = 0; i < args.length; i++) {
            String name = args[i];
            if (i + 1 >= args.length) {
                usage("missing value for " + name);
            }
            String value = args[++i];
            switch (name) {
                case "--port": port = Integer.parseInt(value); break;
                case "--handlers": handlers = Integer.parseInt(value); break;
                case "--mode": mode = value; break;
                default: usage("unknown option " + name);
            }
        }
        if (port < 0 || port > 65535 || handlers < 1
                || !(mode.equals("stuck") || mode.equals("healthy"))) {
            usage("bad option value");
        }
        final boolean stuck = mode.equals("stuck");

        Thread cleaner = null;
        if (stuck) {
            cleaner = new Thread(StuckBroker::logCleaner, "kafka-log-cleaner-thread-0");
            cleaner.setDaemon(true);
            cleaner.start();
            CLEANER_HOLDS_LOG.await();
        }

        for (int i = 0; i < handlers; i++) {
            final ReentrantLock partitionLock = new ReentrantLock();
            Thread t = new Thread(() -> handlerLoop(stuck, partitionLock),
                "data-plane-kafka-request-handler-" + i);
            t.setDaemon(true);
            t.start();
        }

        ServerSocket server = new ServerSocket();
        server.bind(new InetSocketAddress(port), BACKLOG);
        int actualPort = server.getLocalPort();
        Thread acceptor = new Thread(() -> acceptLoop(server),
            "data-plane-kafka-socket-acceptor-ListenerName(PLAINTEXT)-PLAINTEXT-" + actualPort);
        acceptor.setDaemon(true);
        acceptor.start();

        say("READY pid=" + ProcessHandle.current().pid() + " port=" + actualPort);

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
            switch (cmd) {
                case "RELEASE":
                    release(cleaner);
                    break;
                case "EXIT":
                    System.exit(0);
                    break;
                default:
                    System.err.println("StuckBroker: unknown command: " + cmd);
            }
        }
    }

    private static void release(Thread cleaner) {
        synchronized (STATE) {
            if (released) {
                System.err.println("StuckBroker: RELEASE again, ignored");
                return;
            }
            released = true;
            releaseN = accepted;
            // Every connection closed so far has seq <= accepted.
            closedOfReleased = closedTotal;
            if (closedOfReleased == releaseN) {
                say("CLOSED " + releaseN);
            }
        }
        if (cleaner != null) {
            cleaner.interrupt(); // the cleaner backs off and leaves LOG_LOCK
        }
    }

    /** Holds LOG_LOCK from start-up and then wants the victim's partition lock. */
    private static void logCleaner() {
        synchronized (LOG_LOCK) {
            CLEANER_HOLDS_LOG.countDown();
            try {
                VICTIM_SET.await();
                ReentrantLock partitionLock = VICTIM.get();
                // Its owner is BLOCKED on LOG_LOCK, which we hold: deadlock.
                partitionLock.lockInterruptibly();
                partitionLock.unlock();
            } catch (InterruptedException e) {
                // RELEASE: give up the cleaning pass, which releases LOG_LOCK.
            }
        }
    }

    private static void acceptLoop(ServerSocket server) {
        for (;;) {
            Socket s;
            try {
                s = server.accept();
            } catch (IOException e) {
                System.err.println("StuckBroker: accept failed: " + e);
                continue;
            }
            Conn c;
            synchronized (STATE) {
                c = new Conn(++accepted, s);
                ALL.add(c);
                say("ACCEPTED " + accepted);
            }
            QUEUE.add(c);
        }
    }

    private static void handlerLoop(boolean stuck, ReentrantLock partitionLock) {
        for (;;) {
            Conn c;
            try {
                // As Kafka's KafkaRequestHandler polls the request channel: idle handlers
                // wake up every 300 ms, so only a stuck one stops running.
                c = QUEUE.poll(300, TimeUnit.MILLISECONDS);
            } catch (InterruptedException e) {
                return; // nobody interrupts handlers
            }
            if (c == null) {
                continue;
            }
            if (stuck) {
                appendToLog(partitionLock);
                // Only reached after RELEASE (the deadlock holds until then).
                boolean backlog;
                synchronized (STATE) {
                    backlog = c.seq <= releaseN;
                }
                if (backlog) {
                    close(c); // backlog from the stuck period: close at once
                    continue;
                }
            }
            serve(c);
        }
    }

    /** Lock order partition lock -> log lock; the cleaner's is the reverse. */
    private static void appendToLog(ReentrantLock partitionLock) {
        partitionLock.lock();
        try {
            if (!released && VICTIM.compareAndSet(null, partitionLock)) {
                VICTIM_SET.countDown();
            }
            synchronized (LOG_LOCK) {
                appended++; // the "append"
            }
        } finally {
            partitionLock.unlock();
        }
    }

    /** Healthy behaviour: read until EOF (or error), then close. */
    private static void serve(Conn c) {
        byte[] buf = new byte[8192];
        try {
            InputStream in = c.socket.getInputStream();
            while (in.read(buf) >= 0) {
                // discard
            }
        } catch (IOException e) {
            // reset by peer etc.: close below
        }
        close(c);
    }

    private static void close(Conn c) {
        try {
            c.socket.close();
        } catch (IOException e) {
            System.err.println("StuckBroker: close failed: " + e);
        }
        synchronized (STATE) {
            if (c.closed) {
                return;
            }
            c.closed = true;
            closedTotal++;
            if (releaseN >= 0 && c.seq <= releaseN) {
                closedOfReleased++;
                if (closedOfReleased == releaseN) {
                    say("CLOSED " + releaseN);
                }
            }
        }
    }

    private static void usage(String why) {
        System.err.println("StuckBroker: " + why);
        System.err.println("usage: StuckBroker [--port n] [--handlers n] [--mode stuck|healthy]");
        System.exit(2);
    }

    private static void say(String line) {
        synchronized (System.out) {
            System.out.println(line);
            System.out.flush();
        }
    }
}
