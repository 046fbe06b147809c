// A plain-socket Java device: it asks Switchboard where to connect, then sends a line every
// PING_SECS and checks its echo. It keeps the client reconnect contract (SPEC section 11),
// so that a dead server or a shed round does not become a reconnect storm:
//
// - An attempt: GET /servers and connect to the first server; when it does not answer, ask
//   again and take the first server of the new answer not yet tried in this attempt (each
//   answer counts a hand-out for its first server only), up to the first list's length.
// - After a lost connection: wait a random 0..reconnect_jitter_ms (from the last answer;
//   5000 before any) before the next attempt.
// - After a failed attempt: wait a random 0..min(120 s, 1 s * 2^n) (full-jitter exponential
//   backoff), n failed attempts so far; n is reset by a connection that lasted 60 s.
//
// When the registry is unreachable (or has no server) it uses the forwarder. With an
// address argument it is a legacy device that only knows that one address (the
// forwarder's, say) and never asks the registry; it waits as above all the same.
//
//   java Device.java [host:port]
//
// Env: SWITCHBOARD_SERVER (http://127.0.0.1:8080), SWITCHBOARD_SERVICE (default),
// SWITCHBOARD_FORWARDER (127.0.0.1:6665), PING_SECS (5), SWITCHBOARD_TIME_SCALE (1: a
// positive integer that divides the contract's waits and its 60 s, for tests; the printed
// waits are before the division).
// For an https:// registry: SWITCHBOARD_CA_CERT (PEM: trust only these CAs; else the JDK's
// roots). No client certificate (SWITCHBOARD_CLIENT_CERT is not read; see the README).
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class Device {
    static final String REGISTRY = env("SWITCHBOARD_SERVER", "http://127.0.0.1:8080").replaceAll("/$", "");
    static final String SERVICE = env("SWITCHBOARD_SERVICE", "default");
    static final String FORWARDER = env("SWITCHBOARD_FORWARDER", "127.0.0.1:6665");
    static final int PING_MS = Integer.parseInt(env("PING_SECS", "5")) * 1000;
    static final HttpClient http = httpClient();
    // The reconnect contract's numbers (SPEC section 11), in milliseconds.
    static final long DEFAULT_JITTER_MS = 5000;
    static final long BACKOFF_BASE_MS = 1000;
    static final long BACKOFF_CAP_MS = 120_000;
    static final long RESET_AFTER_MS = 60_000;
    static final long TIME_SCALE = timeScale();
    /** reconnect_jitter_ms of the last answer. */
    static long jitterMs = DEFAULT_JITTER_MS;

    public static void main(String[] args) throws InterruptedException {
        String only = args.length > 0 ? args[0] : null;
        int failures = 0; // failed attempts since the last connection that lasted RESET_AFTER_MS
        while (true) {
            Socket socket = attempt(only);
            if (socket == null) {
                long cap = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS << Math.min(failures, 7));
                failures = Math.min(failures + 1, 64);
                long waitMs = ThreadLocalRandom.current().nextLong(cap);
                System.out.println("backing off " + waitMs + " ms (up to " + cap + " ms)");
                pause(waitMs);
                continue;
            }
            long since = System.nanoTime();
            try (socket) {
                session(socket);
            } catch (IOException e) {
                System.out.println("connection lost: " + e.getMessage());
            }
            if ((System.nanoTime() - since) / 1_000_000 * TIME_SCALE >= RESET_AFTER_MS) failures = 0;
            long waitMs = ThreadLocalRandom.current().nextLong(Math.max(jitterMs, 1));
            System.out.println("reconnecting in " + waitMs + " ms");
            pause(waitMs);
        }
    }

    /**
     * One attempt of the contract: the connected socket, or null when no server answered.
     * With {@code only} (a legacy device), that address alone, without the registry.
     */
    static Socket attempt(String only) throws InterruptedException {
        List<String> servers = only != null ? List.of(only) : ask();
        if (servers == null) {
            System.out.println(why + "; using the forwarder " + FORWARDER);
            servers = List.of(FORWARDER);
        }
        List<String> tried = new ArrayList<>();
        int picks = servers.size();
        for (int n = 0; n < picks; n++) {
            if (n > 0 && only == null) {
                List<String> fresh = ask();
                if (fresh == null) System.out.println(why + "; trying the rest of the last list");
                else servers = fresh;
            }
            String address = servers.stream().filter(a -> !tried.contains(a)).findFirst().orElse(null);
            if (address == null) break;
            tried.add(address);
            Socket socket = connect(address);
            if (socket != null) return socket;
        }
        return null;
    }

    /** Why the last {@link #ask} gave no list. */
    static String why = "";

    /** One GET /servers: the ranked addresses, best first; null (and {@link #why}) for none. */
    static List<String> ask() throws InterruptedException {
        URI uri = URI.create(REGISTRY + "/servers?service=" + SERVICE);
        List<String> servers = new ArrayList<>();
        try {
            HttpResponse<String> answer = http.send(HttpRequest.newBuilder(uri).timeout(Duration.ofSeconds(5)).build(),
                    HttpResponse.BodyHandlers.ofString());
            if (answer.statusCode() != 200) throw new IOException("status " + answer.statusCode());
            Matcher jitter = Pattern.compile("\"reconnect_jitter_ms\"\\s*:\\s*(\\d+)").matcher(answer.body());
            jitterMs = jitter.find() ? Long.parseLong(jitter.group(1)) : DEFAULT_JITTER_MS;
            Matcher address = Pattern.compile("\"address\"\\s*:\\s*\"([^\"]+)\"").matcher(answer.body());
            while (address.find()) servers.add(address.group(1));
        } catch (IOException e) {
            why = "registry unreachable (" + e + ")";
            return null;
        }
        if (servers.isEmpty()) {
            why = "no servers";
            return null;
        }
        System.out.println("servers " + String.join(" ", servers));
        return servers;
    }

    /** Sleeps a contract wait of {@code ms} milliseconds (divided by the time scale). */
    static void pause(long ms) throws InterruptedException {
        long nanos = ms * 1_000_000 / TIME_SCALE;
        Thread.sleep(nanos / 1_000_000, (int) (nanos % 1_000_000));
    }

    /** SWITCHBOARD_TIME_SCALE: every contract wait is divided by it (1 in production). */
    static long timeScale() {
        String raw = env("SWITCHBOARD_TIME_SCALE", "1");
        try {
            long scale = Long.parseLong(raw);
            if (scale >= 1) return scale;
        } catch (NumberFormatException ignored) {
            // said below
        }
        System.err.println("SWITCHBOARD_TIME_SCALE=" + raw + ": not a positive integer");
        System.exit(2);
        return 1;
    }

    static Socket connect(String address) {
        int colon = address.lastIndexOf(':');
        String host = address.substring(0, colon).replaceAll("^\\[|\\]$", "");
        Socket socket = new Socket();
        try {
            socket.connect(new InetSocketAddress(host, Integer.parseInt(address.substring(colon + 1))), 2000);
            System.out.println("connected to " + address);
            return socket;
        } catch (IOException | IllegalArgumentException e) {
            System.out.println("cannot connect to " + address + ": " + e.getMessage());
            try { socket.close(); } catch (IOException ignored) { /* never connected */ }
            return null;
        }
    }

    /** Pings until the connection is lost (then throws). */
    static void session(Socket socket) throws IOException {
        BufferedReader in = new BufferedReader(new InputStreamReader(socket.getInputStream(), StandardCharsets.UTF_8));
        OutputStream out = socket.getOutputStream();
        for (long n = 1; ; n++) {
            String line = "ping " + n;
            out.write((line + "\n").getBytes(StandardCharsets.UTF_8));
            socket.setSoTimeout(5000);
            if (!line.equals(in.readLine())) throw new IOException("closed or bad echo");
            System.out.println("echo ok");
            // Idle until the next ping, but notice at once if the server closes.
            socket.setSoTimeout(PING_MS);
            try {
                if (in.read() == -1) throw new IOException("closed by the server");
                throw new IOException("unexpected data");
            } catch (SocketTimeoutException quiet) {
                // Nothing arrived: time for the next ping.
            }
        }
    }

    /**
     * The registry's client. For an https:// registry with SWITCHBOARD_CA_CERT set, it trusts
     * only the CA certificates in that PEM file; else the JDK's roots (hostname checked).
     */
    static HttpClient httpClient() {
        HttpClient.Builder builder = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5));
        if (REGISTRY.startsWith("https://")) {
            String ca = System.getenv("SWITCHBOARD_CA_CERT");
            if (ca != null && !ca.isEmpty()) builder.sslContext(trusting(Path.of(ca)));
            if (System.getenv("SWITCHBOARD_CLIENT_CERT") != null)
                System.out.println("SWITCHBOARD_CLIENT_CERT ignored: this example shows no client certificate");
        }
        return builder.build();
    }

    /** TLS that trusts the certificates of a PEM file: CertificateFactory, KeyStore, TrustManagerFactory. */
    static SSLContext trusting(Path pem) {
        try (InputStream in = Files.newInputStream(pem)) {
            KeyStore roots = KeyStore.getInstance(KeyStore.getDefaultType());
            roots.load(null, null);
            int n = 0;
            for (Certificate cert : CertificateFactory.getInstance("X.509").generateCertificates(in))
                roots.setCertificateEntry("ca-" + n++, cert);
            if (n == 0) throw new GeneralSecurityException("no certificate in it");
            TrustManagerFactory trust = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
            trust.init(roots);
            SSLContext tls = SSLContext.getInstance("TLS");
            tls.init(null, trust.getTrustManagers(), null);
            return tls;
        } catch (IOException | GeneralSecurityException e) {
            throw new IllegalStateException("SWITCHBOARD_CA_CERT=" + pem + ": " + e.getMessage(), e);
        }
    }

    static String env(String name, String fallback) {
        String value = System.getenv(name);
        return value == null || value.isEmpty() ? fallback : value;
    }
}
