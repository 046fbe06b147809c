// A plain-socket Java device: it asks Switchboard where to connect (GET /servers), connects
// to the first server that answers (falling back to the next), then sends a line every
// PING_SECS and checks its echo. After a lost connection it waits a random
// 0..reconnect_jitter_ms before it asks again. When the registry is unreachable (or has no
// server) it uses the forwarder. With an address argument it is a legacy device that
// only knows that one address (the forwarder's, say) and never asks the registry.
//
//   java Device.java [host:port]
//
// Env: SWITCHBOARD_SERVER (http://127.0.0.1:8080), SWITCHBOARD_SERVICE (default),
// SWITCHBOARD_FORWARDER (127.0.0.1:6665), PING_SECS (5).
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
    static long jitterMs = 5000;

    public static void main(String[] args) throws InterruptedException {
        while (true) {
            List<String> servers = args.length > 0 ? List.of(args[0]) : resolve();
            for (String address : servers) {
                Socket socket = connect(address);
                if (socket == null) continue;
                try (socket) {
                    session(socket);
                } catch (IOException e) {
                    System.out.println("connection lost: " + e.getMessage());
                }
                break;
            }
            long waitMs = ThreadLocalRandom.current().nextLong(Math.max(jitterMs, 1));
            System.out.println("reconnecting in " + waitMs + " ms");
            Thread.sleep(waitMs);
        }
    }

    /** The ranked addresses, best first; the forwarder when the registry cannot help. */
    static List<String> resolve() throws InterruptedException {
        URI uri = URI.create(REGISTRY + "/servers?service=" + SERVICE);
        try {
            HttpResponse<String> answer = http.send(HttpRequest.newBuilder(uri).timeout(Duration.ofSeconds(5)).build(),
                    HttpResponse.BodyHandlers.ofString());
            if (answer.statusCode() != 200) throw new IOException("status " + answer.statusCode());
            Matcher jitter = Pattern.compile("\"reconnect_jitter_ms\"\\s*:\\s*(\\d+)").matcher(answer.body());
            jitterMs = jitter.find() ? Long.parseLong(jitter.group(1)) : 5000;
            List<String> servers = new ArrayList<>();
            Matcher address = Pattern.compile("\"address\"\\s*:\\s*\"([^\"]+)\"").matcher(answer.body());
            while (address.find()) servers.add(address.group(1));
            if (!servers.isEmpty()) {
                System.out.println("servers " + String.join(" ", servers));
                return servers;
            }
            System.out.println("no servers; using the forwarder " + FORWARDER);
        } catch (IOException e) {
            System.out.println("registry unreachable (" + e + "); using the forwarder " + FORWARDER);
        }
        return List.of(FORWARDER);
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
