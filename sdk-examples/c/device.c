/*
 * A firmware-style Switchboard device on POSIX sockets. It asks the registry for the
 * ranked servers with a minimal HTTP/1.0 `GET /servers?service=...` and
 * `Accept: text/plain` (one host:port per line, best first), connects to the first line
 * that answers, falling back to the next, and uses the forwarder address when the
 * registry is unreachable or has no server. Then it sends a line every PING_SECS and
 * checks its echo; after a lost connection it waits a random 0..reconnect_jitter_ms
 * (the X-Reconnect-Jitter-Ms header of the answer; 5000 before any) and starts over.
 *
 *   gcc -O2 -Wall -o device device.c
 *   ./device [registry host:port] [forwarder host:port] [service]
 *
 * Defaults: 127.0.0.1:8080 127.0.0.1:6665 default. Env: PING_SECS (5).
 */
#define _GNU_SOURCE /* strcasestr */
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

/* Fills `servers` (and `jitter_ms`, when answered) from the registry; the count, or -1
 * when it cannot be asked. */
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
    return count;
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
    char servers[MAX_SERVERS][ADDR_LEN];
    long jitter_ms = 5000;

    setvbuf(stdout, NULL, _IOLBF, 0);
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    for (;;) {
        int count = lookup(registry, service, servers, &jitter_ms);
        if (count <= 0) {
            printf("%s; using the forwarder %s\n", count < 0 ? "registry unreachable" : "no servers",
                   forwarder);
            snprintf(servers[0], ADDR_LEN, "%s", forwarder);
            count = 1;
        } else {
            printf("servers");
            for (int i = 0; i < count; i++)
                printf(" %s", servers[i]);
            printf("\n");
        }
        for (int i = 0; i < count; i++) {
            int fd = dial(servers[i]);
            if (fd < 0) {
                printf("cannot connect to %s\n", servers[i]);
                continue;
            }
            printf("connected to %s\n", servers[i]);
            session(fd, ping_secs);
            close(fd);
            printf("connection lost\n");
            break;
        }
        long wait_ms = jitter_ms > 0 ? rand() % jitter_ms : 0;
        printf("reconnecting in %ld ms\n", wait_ms);
        struct timespec ts = {.tv_sec = wait_ms / 1000, .tv_nsec = (wait_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
}
