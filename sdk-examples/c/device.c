/*
 * A firmware-style Switchboard device on POSIX sockets. It asks the registry for the
 * ranked servers with a minimal HTTP/1.0 `GET /servers?service=...` and
 * `Accept: text/plain` (one host:port per line, best first), uses the forwarder address
 * when the registry is unreachable or has no server, and sends a line every PING_SECS
 * and checks its echo. It keeps the client reconnect contract (SPEC section 11), so that
 * a dead server or a shed round does not become a reconnect storm:
 *
 * - An attempt: ask and connect to the first line; when it does not answer, ask again
 *   and take the first line of the new answer not yet tried in this attempt (each answer
 *   counts a hand-out for its first server only), up to the first answer's length.
 * - After a lost connection: wait a random 0..reconnect_jitter_ms (the
 *   X-Reconnect-Jitter-Ms header of the last answer; 5000 before any).
 * - After a failed attempt: wait a random 0..min(120 s, 1 s * 2^n) (full-jitter
 *   exponential backoff), n failed attempts so far; n is reset by a connection that
 *   lasted 60 s.
 *
 *   gcc -O2 -Wall -o device device.c
 *   ./device [registry host:port] [forwarder host:port] [service]
 *
 * Defaults: 127.0.0.1:8080 127.0.0.1:6665 default. Env: PING_SECS (5),
 * SWITCHBOARD_TIME_SCALE (1: a positive integer that divides the contract's waits and
 * its 60 s, for tests; the printed waits are before the division).
 */
#define _GNU_SOURCE /* strcasestr */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_SERVERS 8
#define ADDR_LEN 128
#define TIMEOUT_SECS 2
/* The reconnect contract's numbers (SPEC section 11), in milliseconds. */
#define DEFAULT_JITTER_MS 5000L
#define BACKOFF_BASE_MS 1000L
#define BACKOFF_CAP_MS 120000L
#define RESET_AFTER_MS 60000L

/* SWITCHBOARD_TIME_SCALE: every contract wait is divided by it (1 in production). */
static long time_scale = 1;

/* A uniform random number in 0..n-1 (n >= 1), from two rand() calls: RAND_MAX may be
 * as small as 32767. */
static long random_below(long n)
{
    unsigned long r = (unsigned long)rand() * ((unsigned long)RAND_MAX + 1) + (unsigned long)rand();
    return (long)(r % (unsigned long)n);
}

/* Sleeps a contract wait of `ms` milliseconds (divided by the time scale). */
static void pause_ms(long ms)
{
    long long ns = (long long)ms * 1000000 / time_scale;
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000), .tv_nsec = (long)(ns % 1000000000)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Milliseconds on the monotonic clock. */
static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000 + (double)ts.tv_nsec / 1e6;
}

/* Connects to "host:port" (or "[v6]:port") with send/receive/connect timeouts; -1 on failure. */
static int dial(const char *address)
{
    char host[ADDR_LEN];
    const char *start = address[0] == '[' ? address + 1 : address;
    const char *colon = strrchr(address, ':');
    if (colon == NULL || colon <= start || (size_t)(colon - start) >= sizeof host)
        return -1;
    size_t len = (size_t)(colon - start) - (colon[-1] == ']');
    memcpy(host, start, len);
    host[len] = '\0';

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *found;
    if (getaddrinfo(host, colon + 1, &hints, &found) != 0)
        return -1;
    int fd = -1;
    for (struct addrinfo *ai = found; ai != NULL && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0)
            continue;
        struct timeval tv = {.tv_sec = TIMEOUT_SECS};
        /* On Linux SO_SNDTIMEO also bounds connect(). */
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(found);
    return fd;
}

static int send_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Fills `servers` (and `jitter_ms`, when answered) from the registry and prints them; the
 * count, 0 when it has none, or -1 when it cannot be asked. */
static int lookup(const char *registry, const char *service, char servers[][ADDR_LEN],
                  long *jitter_ms)
{
    char buf[4096];
    int fd = dial(registry);
    if (fd < 0)
        return -1;
    int len = snprintf(buf, sizeof buf,
                       "GET /servers?service=%s HTTP/1.0\r\nHost: %s\r\nAccept: text/plain\r\n\r\n",
                       service, registry);
    size_t got = 0;
    ssize_t n = 0;
    if (send_all(fd, buf, (size_t)len) == 0)
        while (got < sizeof buf - 1 && (n = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0)
            got += (size_t)n;
    close(fd);
    buf[got] = '\0';
    char *body = strstr(buf, "\r\n\r\n");
    if (n < 0 || strncmp(buf, "HTTP/1.", 7) != 0 || strncmp(buf + 8, " 200", 4) != 0 || body == NULL)
        return -1;
    *body = '\0'; /* the headers end here */
    static const char header[] = "\r\nX-Reconnect-Jitter-Ms:";
    const char *jitter = strcasestr(buf, header);
    if (jitter != NULL)
        *jitter_ms = strtol(jitter + sizeof header - 1, NULL, 10);
    int count = 0;
    for (char *line = strtok(body + 4, "\r\n"); line != NULL && count < MAX_SERVERS;
         line = strtok(NULL, "\r\n"))
        snprintf(servers[count++], ADDR_LEN, "%s", line);
    if (count > 0) {
        printf("servers");
        for (int i = 0; i < count; i++)
            printf(" %s", servers[i]);
        printf("\n");
    }
    return count;
}

/* One attempt of the contract: the connected socket, or -1 when no server answered. */
static int attempt(const char *registry, const char *forwarder, const char *service,
                   long *jitter_ms)
{
    char servers[MAX_SERVERS][ADDR_LEN], fresh[MAX_SERVERS][ADDR_LEN], tried[MAX_SERVERS][ADDR_LEN];
    int count = lookup(registry, service, servers, jitter_ms);
    if (count <= 0) {
        printf("%s; using the forwarder %s\n", count < 0 ? "registry unreachable" : "no servers",
               forwarder);
        snprintf(servers[0], ADDR_LEN, "%s", forwarder);
        count = 1;
    }
    int picks = count, ntried = 0;
    for (int n = 0; n < picks; n++) {
        if (n > 0) {
            int got = lookup(registry, service, fresh, jitter_ms);
            if (got <= 0) {
                printf("%s; trying the rest of the last list\n",
                       got < 0 ? "registry unreachable" : "no servers");
            } else {
                memcpy(servers, fresh, sizeof servers);
                count = got;
            }
        }
        int pick = -1;
        for (int i = 0; i < count && pick < 0; i++) {
            int seen = 0;
            for (int t = 0; t < ntried && !seen; t++)
                seen = strcmp(tried[t], servers[i]) == 0;
            if (!seen)
                pick = i;
        }
        if (pick < 0)
            break;
        const char *address = memcpy(tried[ntried++], servers[pick], ADDR_LEN);
        int fd = dial(address);
        if (fd >= 0) {
            printf("connected to %s\n", address);
            return fd;
        }
        printf("cannot connect to %s\n", address);
    }
    return -1;
}

/* Pings every `ping_secs` until the connection is lost. */
static void session(int fd, int ping_secs)
{
    char line[64], echo[64];
    for (unsigned long n = 1;; n++) {
        int len = snprintf(line, sizeof line, "ping %lu\n", n);
        if (send_all(fd, line, (size_t)len) != 0)
            return;
        int got = 0;
        while (got < len) {
            ssize_t r = recv(fd, echo + got, (size_t)(len - got), 0);
            if (r <= 0)
                return;
            got += (int)r;
        }
        if (memcmp(line, echo, (size_t)len) != 0)
            return;
        printf("echo ok\n");
        /* Idle until the next ping, but notice at once if the server closes. */
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, ping_secs * 1000) != 0)
            return;
    }
}

int main(int argc, char **argv)
{
    const char *registry = argc > 1 ? argv[1] : "127.0.0.1:8080";
    const char *forwarder = argc > 2 ? argv[2] : "127.0.0.1:6665";
    const char *service = argc > 3 ? argv[3] : "default";
    const char *ping = getenv("PING_SECS");
    int ping_secs = ping != NULL && atoi(ping) > 0 ? atoi(ping) : 5;
    const char *scale = getenv("SWITCHBOARD_TIME_SCALE");
    if (scale != NULL && *scale != '\0') {
        char *end;
        time_scale = strtol(scale, &end, 10);
        if (*end != '\0' || time_scale < 1) {
            fprintf(stderr, "SWITCHBOARD_TIME_SCALE=%s: not a positive integer\n", scale);
            return 2;
        }
    }
    long jitter_ms = DEFAULT_JITTER_MS;
    int failures = 0; /* failed attempts since the last connection that lasted RESET_AFTER_MS */

    setvbuf(stdout, NULL, _IOLBF, 0);
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    for (;;) {
        int fd = attempt(registry, forwarder, service, &jitter_ms);
        if (fd < 0) {
            long cap = BACKOFF_BASE_MS << (failures < 7 ? failures : 7);
            if (cap > BACKOFF_CAP_MS)
                cap = BACKOFF_CAP_MS;
            if (failures < 64)
                failures++;
            long wait_ms = random_below(cap);
            printf("backing off %ld ms (up to %ld ms)\n", wait_ms, cap);
            pause_ms(wait_ms);
            continue;
        }
        double since = now_ms();
        session(fd, ping_secs);
        close(fd);
        printf("connection lost\n");
        if ((now_ms() - since) * (double)time_scale >= (double)RESET_AFTER_MS)
            failures = 0;
        long wait_ms = jitter_ms > 0 ? random_below(jitter_ms) : 0;
        printf("reconnecting in %ld ms\n", wait_ms);
        pause_ms(wait_ms);
    }
}
