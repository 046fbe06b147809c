// A Netty 4 echo server that joins Switchboard: it registers with java.net.http.HttpClient,
// heartbeats its live channel count every heartbeat_secs, registers again when the registry
// forgot it (404), closes `shed` channels when asked, and deregisters on shutdown.
//
//   J=/usr/share/java; CP=$J/netty-common.jar:$J/netty-buffer.jar:$J/netty-transport.jar:$J/netty-resolver.jar:$J/netty-codec.jar:$J/netty-handler.jar
//   java -cp $CP NettyBackend.java 6666
//
// Env: SWITCHBOARD_SERVER (http://127.0.0.1:8080), SWITCHBOARD_SERVICE (default),
// PORT (6666; 0 picks a free one), ADVERTISE_HOST (127.0.0.1), TTL_SECS (15).
// For an https:// registry: SWITCHBOARD_CA_CERT (PEM: trust only these CAs; else the JDK's
// roots). No client certificate (SWITCHBOARD_CLIENT_CERT is not read; see the README).
import io.netty.bootstrap.ServerBootstrap;
import io.netty.channel.Channel;
import io.netty.channel.ChannelHandler;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;
import io.netty.channel.EventLoopGroup;
import io.netty.channel.group.ChannelGroup;
import io.netty.channel.group.DefaultChannelGroup;
import io.netty.channel.nio.NioEventLoopGroup;
import io.netty.channel.socket.nio.NioServerSocketChannel;
import io.netty.util.concurrent.GlobalEventExecutor;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class NettyBackend {
    static final String REGISTRY = env("SWITCHBOARD_SERVER", "http://127.0.0.1:8080").replaceAll("/$", "");
    static final String SERVICE = env("SWITCHBOARD_SERVICE", "default");
    static final String HOST = env("ADVERTISE_HOST", "127.0.0.1");
    static final String TTL = env("TTL_SECS", "15");
    static final String INSTANCES = REGISTRY + "/v1/services/" + SERVICE + "/instances";

    /** Live client channels; Netty removes each one when it closes. */
    static final ChannelGroup live = new DefaultChannelGroup(GlobalEventExecutor.INSTANCE);
    static final HttpClient http = httpClient();
    static final CountDownLatch stop = new CountDownLatch(1);
    static final CountDownLatch stopped = new CountDownLatch(1);

    @ChannelHandler.Sharable
    static final class Echo extends ChannelInboundHandlerAdapter {
        @Override public void channelActive(ChannelHandlerContext ctx) {
            live.add(ctx.channel());
            InetSocketAddress peer = (InetSocketAddress) ctx.channel().remoteAddress();
            System.out.println("accepted " + peer.getAddress().getHostAddress() + ":" + peer.getPort()
                    + " (live " + live.size() + ")");
        }
        @Override public void channelRead(ChannelHandlerContext ctx, Object msg) { ctx.write(msg); }
        @Override public void channelReadComplete(ChannelHandlerContext ctx) { ctx.flush(); }
        @Override public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) { ctx.close(); }
    }

    /** The registration: id, lease and heartbeat period. */
    record Me(String id, String lease, long heartbeatSecs) {}

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args.length > 0 ? args[0] : env("PORT", "6666"));
        EventLoopGroup boss = new NioEventLoopGroup(1), workers = new NioEventLoopGroup();
        Channel server = new ServerBootstrap().group(boss, workers)
                .channel(NioServerSocketChannel.class)
                .childHandler(new Echo())
                .bind(HOST, port).sync().channel();
        String address = HOST + ":" + ((InetSocketAddress) server.localAddress()).getPort();
        System.out.println("listening on " + address);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            stop.countDown(); // the main thread deregisters, then closes the server
            try { stopped.await(10, TimeUnit.SECONDS); } catch (InterruptedException e) { /* exiting */ }
        }));

        Me me = register(address);
        while (me != null && !stop.await(me.heartbeatSecs(), TimeUnit.SECONDS)) {
            int connections = live.size();
            try {
                HttpResponse<String> answer = send(HttpRequest.newBuilder(URI.create(INSTANCES + "/" + me.id() + "/heartbeat"))
                        .header("X-Lease", me.lease())
                        .PUT(json("{\"connections\":" + connections + "}")));
                if (answer.statusCode() == 404) {
                    System.out.println("unknown instance; registering again");
                    me = register(address);
                } else if (answer.statusCode() != 200) {
                    System.out.println("heartbeat answered " + answer.statusCode());
                } else {
                    long shed = Long.parseLong(field(answer.body(), "shed"));
                    System.out.println("heartbeat connections=" + connections + " shed=" + shed);
                    if (shed > 0) shed(shed);
                }
            } catch (IOException e) {
                System.out.println("heartbeat failed: " + e);
            }
        }
        if (me != null) {
            try {
                send(HttpRequest.newBuilder(URI.create(INSTANCES + "/" + me.id())).header("X-Lease", me.lease()).DELETE());
                System.out.println("deregistered id=" + me.id());
            } catch (IOException e) {
                System.out.println("deregister failed: " + e);
            }
        }
        server.close().awaitUninterruptibly(5, TimeUnit.SECONDS);
        live.close().awaitUninterruptibly(5, TimeUnit.SECONDS);
        boss.shutdownGracefully(0, 2, TimeUnit.SECONDS);
        workers.shutdownGracefully(0, 2, TimeUnit.SECONDS).awaitUninterruptibly(5, TimeUnit.SECONDS);
        stopped.countDown();
    }

    /** Registers until it works (or we are stopping); null when stopping. */
    static Me register(String address) throws InterruptedException {
        String body = "{\"address\":\"" + address + "\",\"ttl_secs\":" + TTL + "}";
        do {
            try {
                HttpResponse<String> answer = send(HttpRequest.newBuilder(URI.create(INSTANCES)).POST(json(body)));
                if (answer.statusCode() == 200 || answer.statusCode() == 201) {
                    Me me = new Me(field(answer.body(), "id"), field(answer.body(), "lease"),
                            Long.parseLong(field(answer.body(), "heartbeat_secs")));
                    System.out.println("registered id=" + me.id() + " heartbeat_secs=" + me.heartbeatSecs());
                    return me;
                }
                System.out.println("register answered " + answer.statusCode() + ": " + answer.body());
            } catch (IOException e) {
                System.out.println("registry unreachable: " + e);
            }
        } while (!stop.await(2, TimeUnit.SECONDS));
        return null;
    }

    /** Closes `count` channels gracefully; their devices reconnect and land elsewhere. */
    static void shed(long count) {
        long closed = 0;
        for (Channel channel : live) {
            if (closed == count) break;
            channel.close();
            closed++;
        }
        System.out.println("shed " + closed);
    }

    static HttpResponse<String> send(HttpRequest.Builder request) throws IOException, InterruptedException {
        HttpRequest built = request.timeout(Duration.ofSeconds(5)).header("Content-Type", "application/json").build();
        return http.send(built, HttpResponse.BodyHandlers.ofString());
    }

    static HttpRequest.BodyPublisher json(String body) {
        return HttpRequest.BodyPublishers.ofString(body);
    }

    /** A string or number field of a flat JSON answer (enough for the registry's). */
    static String field(String json, String name) {
        Matcher m = Pattern.compile("\"" + name + "\"\\s*:\\s*\"?([^\",}]*)").matcher(json);
        if (!m.find()) throw new IllegalStateException("no " + name + " in " + json);
        return m.group(1);
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
