/*
 * BusyPool: a connection surge that saturates a Kafka broker's network
 * processor threads. A small fixed pool of "kafka-network-thread" threads
 * serves every connection; under a surge of clients each of them spends
 * nearly all its time on CPU, while the acceptor stays idle. The same file
 * also holds the client that drives the surge (--client).
 *
 * What it reproduces
 * ------------------
 * A Kafka broker has one acceptor thread per listener and a fixed pool of
 * network processor threads (num.network.threads, default 3) that read
 * requests off the sockets and write the responses. When many clients
 * connect at once (a reconnect storm after a rolling restart, a fleet of
 * consumers restarting, a misconfigured client opening a connection per
 * request), the processors' idle time vanishes: Kafka's
 * NetworkProcessorAvgIdlePercent metric drops towards 0 and requests queue
 * up behind them. Seen from the OS, the handful of "kafka-network-thread"
 * threads sit at ~100% of a CPU each (or are runnable and waiting for one),
 * whereas in normal operation they are mostly asleep in selector.poll
 * (epoll_wait with a 300 ms timeout), waking up a few times a second.
 *
 * This program does the same with plain java.net sockets (no NIO selector:
 * one processor serves one connection at a time):
 *   - A ServerSocket bound to 127.0.0.1 (--port, 0 = ephemeral; backlog 50,
 *     Kafka's default socket.listen.backlog.size). On a host with IPv6 the
 *     JVM opens a dual-stack AF_INET6 socket, so `ss -tanp` shows it as
 *     [::ffff:127.0.0.1]:<port> (plain AF_INET with
 *     -Djava.net.preferIPv4Stack=true).
 *   - One acceptor thread, "kafka-socket-acceptor" (comm "kafka-socket-ac"),
 *     accepts in a loop, sets TCP_NODELAY on the new socket (as Kafka does)
 *     and puts it on a shared queue.
 *   - --threads processor threads, "kafka-network-thread-<i>", i = 0, 1, ...
 *     (comm "kafka-network-t" for all of them). An idle processor waits on
 *     the queue with a 300 ms timeout (BlockingQueue.poll, a futex wait), so
 *     idle processors still wake up about 3 times a second, like Kafka's
 *     selector.poll(300). A processor that gets a connection serves it until
 *     EOF: it reads lines; for each line it does --work-us microseconds of
 *     pure CPU work (a busy loop of multiply/xor-shift steps whose result is
 *     published to a volatile field, checking System.nanoTime, which is a
 *     vDSO call: no system call while working) and then writes back the line
 *     "OK"; on EOF (or a read/write error) it closes the socket and takes the
 *     next connection from the queue.
 *   - So with more simultaneous connections than processors, the extra
 *     connections wait unserved in the queue (their clients block on their
 *     first request) until a processor is free, and every processor with a
 *     connection whose client keeps sending is busy: per request it spends
 *     --work-us on CPU and only a network round trip (tens of microseconds
 *     on loopback) waiting for the next line. On a host with at least
 *     --threads free CPUs each busy processor's schedstat run time grows at
 *     ~1 s per second; with fewer CPUs the processors share them (their
 *     run-queue wait grows instead).
 *
 * Usage
 * -----
 *   javac -d <dir> BusyPool.java
 *   server:
 *     java <jvm flags> -cp <dir> BusyPool [--port n] [--threads n]
 *          [--work-us n]
 *       --port <n>        TCP port on 127.0.0.1; 0 = an ephemeral port
 *                         (see READY)                              (default 0)
 *       --threads <n>     processor threads (Kafka num.network.threads),
 *                         n >= 1                                   (default 3)
 *       --work-us <n>     microseconds of CPU work per request line,
 *                         n >= 0                                (default 2000)
 *   client:
 *     java <jvm flags> -cp <dir> BusyPool --client --port <n>
 *          [--connections n] [--seconds s]
 *       --port <n>        the server's port on 127.0.0.1           (required)
 *       --connections <n> concurrent connections, n >= 1          (default 20)
 *       --seconds <s>     how long to keep sending, a decimal
 *                         number > 0                               (default 5)
 *
 * Server protocol (stdout, one line per event, flushed; commands on stdin,
 * one per line, surrounding blanks ignored)
 * ------------------------------------------------------------------------
 *   READY pid=<pid> port=<port>
 *                    printed once the socket is listening and the acceptor
 *                    and all processors are started. <port> is the actual
 *                    port (useful with --port 0).
 *   stdin "STATS" -> STATS accepted=<n> served=<n> requests=<n>
 *                    cumulative counts: connections accepted, connections
 *                    finished (closed by a processor), request lines
 *                    answered with OK.
 *   stdin "EXIT"     exit status 0 at once (sockets are closed by the kernel).
 *   EOF on stdin     exit status 0, as EXIT.
 *   Unknown commands are reported on stderr and ignored. Accept and I/O
 *   errors are reported on stderr (a connection reset by its client is not
 *   an error: the processor just closes it).
 *
 * Wire protocol (per TCP connection, ASCII lines ending in "\n")
 * ---------------------------------------------------------------
 *   client -> server: any line (the client mode sends "PING")
 *   server -> client: "OK", once per line received, after the work is done.
 *
 * Client mode (--client)
 * ----------------------
 *   Opens --connections connections to 127.0.0.1:<port> at once, one thread
 *   per connection named "client-<i>", i = 0, 1, ... (comm "client-<i>").
 *   Each thread connects (TCP_NODELAY), then loops: send "PING", wait for
 *   "OK", until --seconds have passed since the client started; then it
 *   closes its connection. A request in flight at the deadline is finished
 *   and counted, so connections still queued at the server at the deadline
 *   each complete one request once a processor takes them. Reads time out
 *   after --seconds + 60 s (a server that stopped answering). When every
 *   thread is done it prints one line on stdout
 *       CLIENT requests=<total>
 *   (<total> = OK replies received over all connections) and exits with
 *   status 0, or 1 if any connection failed (connect refused, reset, read
 *   timeout, a reply other than "OK"; each reported on stderr). The client
 *   does not read stdin.
 *
 * Recommended JVM flags (small, quiet JVM):
 *   -Xmx64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData
 */

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketException;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;

public final class BusyPool {
    /** Kafka's default socket.listen.backlog.size. */
    private static final int BACKLOG = 50;
    /** Kafka's processor poll timeout (selector.poll(300)). */
    private static final long POLL_MS = 300;
    private static final byte[] OK = "OK\n".getBytes(StandardCharsets.US_ASCII);
    private static final byte[] PING = "PING\n".getBytes(StandardCharsets.US_ASCII);

    private static final BlockingQueue<Socket> QUEUE = new LinkedBlockingQueue<>();
    private static final AtomicLong ACCEPTED = new AtomicLong();
    private static final AtomicLong SERVED = new AtomicLong();
    private static final AtomicLong REQUESTS = new AtomicLong();

    /** Where the busy work's results go, so the JIT cannot drop the work. */
    private static volatile long sink;

    private BusyPool() {}

    public static void main(String[] args) throws Exception {
        boolean client = false;
        int port = 0;
        boolean portGiven = false;
        int threads = 3;
        long workUs = 2000;
        int connections = 20;
        double seconds = 5;
        boolean serverOption = false;
        boolean clientOption = false;
        for (int i = 0; i < args.length; i++) {
            String name = args[i];
            if (name.equals("--client")) {
                client = true;
                continue;
            }
            if (i + 1 >= args.length) {
                usage("missing value for " + name);
            }
            String value = args[++i];
            try {
                switch (name) {
                    case "--port": port = Integer.parseInt(value); portGiven = true; break;
                    case "--threads": threads = Integer.parseInt(value); serverOption = true; break;
                    case "--work-us": workUs = Long.parseLong(value); serverOption = true; break;
                    case "--connections":
                        connections = Integer.parseInt(value);
                        clientOption = true;
                        break;
                    case "--seconds": seconds = Double.parseDouble(value); clientOption = true; break;
                    default: usage("unknown option " + name);
                }
            } catch (NumberFormatException e) {
                usage("bad value for " + name + ": " + value);
            }
        }
        if (client) {
            if (serverOption) {
                usage("--threads and --work-us are server options");
            }
            if (!portGiven || port < 1 || port > 65535 || connections < 1
                    || !(seconds > 0) || Double.isInfinite(seconds)) {
                usage("bad option value");
            }
            System.exit(runClient(port, connections, seconds));
        }
        if (clientOption) {
            usage("--connections and --seconds need --client");
        }
        if (port < 0 || port > 65535 || threads < 1 || workUs < 0
                || workUs > Long.MAX_VALUE / 4000) {
            usage("bad option value");
        }
        runServer(port, threads, workUs * 1000);
    }

    // ------------------------------------------------------------------
    // Server
    // ------------------------------------------------------------------

    private static void runServer(int port, int threads, long workNs) throws IOException {
        ServerSocket server = new ServerSocket();
        server.bind(new InetSocketAddress(InetAddress.getByName("127.0.0.1"), port), BACKLOG);
        int actualPort = server.getLocalPort();

        for (int i = 0; i < threads; i++) {
            Thread t = new Thread(() -> processorLoop(workNs), "kafka-network-thread-" + i);
            t.setDaemon(true);
            t.start();
        }
        Thread acceptor = new Thread(() -> acceptLoop(server), "kafka-socket-acceptor");
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
                case "STATS":
                    say("STATS accepted=" + ACCEPTED.get() + " served=" + SERVED.get()
                        + " requests=" + REQUESTS.get());
                    break;
                case "EXIT":
                    System.exit(0);
                    break;
                default:
                    System.err.println("BusyPool: unknown command: " + cmd);
            }
        }
    }

    private static void acceptLoop(ServerSocket server) {
        for (;;) {
            Socket s;
            try {
                s = server.accept();
            } catch (IOException e) {
                System.err.println("BusyPool: accept failed: " + e);
                sleepMs(100); // e.g. EMFILE: do not spin
                continue;
            }
            try {
                s.setTcpNoDelay(true);
            } catch (SocketException e) {
                // the peer may already be gone; the processor will see it
            }
            ACCEPTED.incrementAndGet();
            QUEUE.add(s);
        }
    }

    private static void processorLoop(long workNs) {
        for (;;) {
            Socket s;
            try {
                s = QUEUE.poll(POLL_MS, TimeUnit.MILLISECONDS);
            } catch (InterruptedException e) {
                return; // nobody interrupts processors
            }
            if (s != null) {
                serve(s, workNs);
            }
        }
    }

    /** Serves one connection until EOF: one OK per line, after the work. */
    private static void serve(Socket s, long workNs) {
        try (s) {
            BufferedReader in = new BufferedReader(
                new InputStreamReader(s.getInputStream(), StandardCharsets.US_ASCII));
            OutputStream out = s.getOutputStream();
            while (in.readLine() != null) {
                work(workNs);
                out.write(OK);
                REQUESTS.incrementAndGet();
            }
        } catch (SocketException e) {
            // reset / broken pipe: the client went away; just close
        } catch (IOException e) {
            System.err.println("BusyPool: " + Thread.currentThread().getName() + ": " + e);
        }
        SERVED.incrementAndGet();
    }

    /** Pure CPU work for workNs nanoseconds (no system calls). */
    private static void work(long workNs) {
        long start = System.nanoTime();
        long x = start | 1;
        do {
            for (int k = 0; k < 256; k++) {
                x = x * 6364136223846793005L + 1442695040888963407L;
                x ^= x >>> 29;
            }
        } while (System.nanoTime() - start < workNs);
        sink = x;
    }

    // ------------------------------------------------------------------
    // Client
    // ------------------------------------------------------------------

    private static int runClient(int port, int connections, double seconds)
            throws InterruptedException {
        long start = System.nanoTime();
        long deadline = start + (long) (seconds * 1e9);
        int readTimeoutMs = (int) Math.min(Integer.MAX_VALUE, (seconds + 60) * 1000);
        AtomicLong total = new AtomicLong();
        AtomicBoolean failed = new AtomicBoolean();
        Thread[] clients = new Thread[connections];
        for (int i = 0; i < connections; i++) {
            clients[i] = new Thread(
                () -> clientLoop(port, deadline, readTimeoutMs, total, failed), "client-" + i);
            clients[i].start();
        }
        for (Thread t : clients) {
            t.join();
        }
        say("CLIENT requests=" + total.get());
        return failed.get() ? 1 : 0;
    }

    private static void clientLoop(int port, long deadline, int readTimeoutMs,
            AtomicLong total, AtomicBoolean failed) {
        String me = Thread.currentThread().getName();
        try (Socket s = new Socket()) {
            s.connect(new InetSocketAddress(InetAddress.getByName("127.0.0.1"), port));
            s.setTcpNoDelay(true);
            s.setSoTimeout(readTimeoutMs);
            BufferedReader in = new BufferedReader(
                new InputStreamReader(s.getInputStream(), StandardCharsets.US_ASCII));
            OutputStream out = s.getOutputStream();
            do {
                out.write(PING);
                String reply = in.readLine();
                if (!"OK".equals(reply)) {
                    throw new IOException(reply == null ? "EOF from server"
                        : "unexpected reply: " + reply);
                }
                total.incrementAndGet();
            } while (System.nanoTime() - deadline < 0);
        } catch (IOException e) {
            System.err.println("BusyPool: " + me + ": " + e);
            failed.set(true);
        }
    }

    // ------------------------------------------------------------------

    private static void sleepMs(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private static void usage(String why) {
        System.err.println("BusyPool: " + why);
        System.err.println("usage: BusyPool [--port n] [--threads n] [--work-us n]");
        System.err.println("       BusyPool --client --port n [--connections n] [--seconds s]");
        System.exit(2);
    }

    private static void say(String line) {
        synchronized (System.out) {
            System.out.println(line);
            System.out.flush();
        }
    }
}
