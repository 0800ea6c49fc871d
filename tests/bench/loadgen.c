/*
 * Load generator for the zt-relay benchmark (see run.py, which compiles and drives it).
 *
 * Written in C, single-threaded epoll client plus one UDP echo thread, so that on a 2-core
 * machine the relay under test, not this program, is what saturates. Modes:
 *
 *   frames  T tunnels speak the relay framing over TCP; each keeps K frames in flight to a
 *           UDP echo peer (a thread here, recvmmsg/sendmmsg) that sends every datagram back.
 *           A frame completes when its echo comes back through the relay. Prints round-trip
 *           frames/s and latency percentiles. Ping-pong is frames with T=1, K=1.
 *   idle    N tunnels each send the hello and one frame, wait for its echo, then hold until
 *           stdin closes; the driver reads the relay's RSS in between.
 *   udp     M connected UDP sockets keep K datagrams in flight to an external echo server
 *           (used by bench_udp_echo.py to compare Python UDP loops).
 *
 * Output: progress lines start with '#'; each result is one JSON object on its own line.
 * Every reply is checked (record length, source address, tunnel id): a relay that mixes
 * up tunnels or corrupts frames makes this program exit non-zero, not report a number.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HDR 5                  /* 17 03 03 LEN_HI LEN_LO */
#define ADDR4 7                /* 04 | IPv4 | port */
#define STAMP 16               /* tunnel id (4) | seq (4) | send time ns (8) */
#define ECHO_BATCH 64
#define HIST_US 1000000        /* latency histogram: 1 us buckets up to 1 s */
#define MAX_EVENTS 256

static void die(const char *what) { perror(what); exit(2); }
static void fail(const char *msg) { fprintf(stderr, "loadgen: %s\n", msg); exit(3); }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* ---- options ---------------------------------------------------------------------- */

struct opts {
    const char *mode;
    struct sockaddr_in target;   /* relay (frames, idle) or echo server (udp) */
    int tunnels, size, inflight, connect_batch;
    double duration, warmup, ready_timeout;
    int busy_poll;   /* frames: echo in the client thread; 1: epoll never sleeps, 2: epoll blocks */
};

static void parse_addr(const char *s, struct sockaddr_in *out) {
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || colon - s >= (long)sizeof(host)) { fprintf(stderr, "bad HOST:PORT %s\n", s); exit(1); }
    memcpy(host, s, colon - s);
    host[colon - s] = 0;
    memset(out, 0, sizeof(*out));
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &out->sin_addr) != 1) { fprintf(stderr, "bad IPv4 %s\n", host); exit(1); }
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen frames|idle|udp --target IPV4:PORT [--tunnels N] [--size BYTES]\n"
            "       [--inflight K] [--duration S] [--warmup S] [--connect-batch N] [--ready-timeout S]\n"
            "       [--busy-poll 0|1|2]  (frames: 1: one spinning thread runs client and echo, so the\n"
            "                           loadgen adds no wakeup latency; uses a whole core;\n"
            "                           2: one thread runs client and echo, blocking in epoll_wait)\n");
    exit(1);
}

static struct opts parse_opts(int argc, char **argv) {
    struct opts o = {0};
    int have_target = 0;
    o.tunnels = 128; o.size = 1400; o.inflight = 8; o.duration = 10; o.warmup = 2;
    o.connect_batch = 256; o.ready_timeout = 120;
    if (argc < 2) usage();
    o.mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *k = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(k, "--target")) { parse_addr(v, &o.target); have_target = 1; }
        else if (!strcmp(k, "--tunnels")) o.tunnels = atoi(v);
        else if (!strcmp(k, "--size")) o.size = atoi(v);
        else if (!strcmp(k, "--inflight")) o.inflight = atoi(v);
        else if (!strcmp(k, "--duration")) o.duration = atof(v);
        else if (!strcmp(k, "--warmup")) o.warmup = atof(v);
        else if (!strcmp(k, "--connect-batch")) o.connect_batch = atoi(v);
        else if (!strcmp(k, "--ready-timeout")) o.ready_timeout = atof(v);
        else if (!strcmp(k, "--busy-poll")) o.busy_poll = atoi(v);
        else usage();
    }
    if (!have_target) usage();
    /* ZeroTier's tcp-proxy ignores datagrams under 16 bytes; the stamp needs 16 too. */
    if (o.size < STAMP || o.size > 65535 - ADDR4) { fprintf(stderr, "--size must be 16..65528\n"); exit(1); }
    if (o.tunnels < 1 || o.inflight < 1 || o.connect_batch < 1) { fprintf(stderr, "counts must be >= 1\n"); exit(1); }
    return o;
}

static void raise_nofile(int need) {
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max < (rlim_t)need) rl.rlim_max = need;   /* works as root; else the next line fails */
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < (rlim_t)need) { fprintf(stderr, "RLIMIT_NOFILE %lu < %d needed\n", (unsigned long)rl.rlim_cur, need); exit(1); }
}

/* ---- latency histogram ------------------------------------------------------------ */

static uint32_t *hist;
static uint64_t hist_n, hist_over;

static void hist_add(uint64_t ns) {
    uint64_t us = ns / 1000;
    if (us >= HIST_US) hist_over++; else hist[us]++;
    hist_n++;
}

static double hist_pct(double p) {
    if (!hist_n) return -1;
    uint64_t want = (uint64_t)(p * (double)hist_n), seen = 0;
    if (want >= hist_n) want = hist_n - 1;
    for (int i = 0; i < HIST_US; i++) { seen += hist[i]; if (seen > want) return i; }
    return HIST_US;
}

/* ---- UDP echo peer (thread) ------------------------------------------------------- */

static atomic_int echo_stop;
static atomic_ullong echo_datagrams;

struct echo {
    int fd, bufsize;
    char *bufs;
    struct mmsghdr msgs[ECHO_BATCH];
    struct iovec iov[ECHO_BATCH];
    struct sockaddr_in from[ECHO_BATCH];
};
static struct echo echo;

/* Receives what is queued (blocking per SO_RCVTIMEO for the first unless MSG_DONTWAIT)
 * and sends every datagram back to its sender. Returns datagrams echoed (0 if none). */
static int echo_batch(struct echo *e, int flags) {
    for (int i = 0; i < ECHO_BATCH; i++) {
        e->iov[i].iov_base = e->bufs + (size_t)i * e->bufsize;
        e->iov[i].iov_len = e->bufsize;
        memset(&e->msgs[i].msg_hdr, 0, sizeof(e->msgs[i].msg_hdr));
        e->msgs[i].msg_hdr.msg_name = &e->from[i];
        e->msgs[i].msg_hdr.msg_namelen = sizeof(e->from[i]);
        e->msgs[i].msg_hdr.msg_iov = &e->iov[i];
        e->msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int n = recvmmsg(e->fd, e->msgs, ECHO_BATCH, flags, NULL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return 0;
        die("echo recvmmsg");
    }
    for (int i = 0; i < n; i++) e->iov[i].iov_len = e->msgs[i].msg_len;
    for (int done = 0; done < n;) {
        int s = sendmmsg(e->fd, e->msgs + done, n - done, 0);
        if (s < 0) { if (errno == EINTR) continue; die("echo sendmmsg"); }
        done += s;
    }
    atomic_fetch_add(&echo_datagrams, n);
    return n;
}

static void *echo_main(void *arg) {
    struct echo *e = arg;
    /* Blocks (up to SO_RCVTIMEO, so echo_stop is seen) for one, then takes what's queued. */
    while (!atomic_load(&echo_stop)) echo_batch(e, MSG_WAITFORONE);
    return NULL;
}

static void start_echo(struct sockaddr_in *bound, int bufsize) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("echo socket");
    /* All tunnels' in-flight datagrams can queue here at once: default rmem would drop. */
    int big = 8 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big)) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big)) != 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    struct timeval tv = {0, 100000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0) die("echo bind");
    socklen_t len = sizeof(*bound);
    getsockname(fd, (struct sockaddr *)bound, &len);
    echo.fd = fd;
    echo.bufsize = bufsize;
    echo.bufs = malloc((size_t)ECHO_BATCH * bufsize);
    if (!echo.bufs) die("malloc");
}

/* ---- tunnels (frames and idle modes) ---------------------------------------------- */

enum { T_NEW, T_CONNECTING, T_OPEN, T_CLOSED };

struct tunnel {
    int fd, state, inflight, epout;
    uint32_t id, seq;
    uint8_t *carry;       /* partial record left from the last read */
    size_t carry_len;
    uint8_t *wbuf;        /* frames not yet accepted by the kernel */
    size_t wlen, woff;
};

static struct opts O;
static struct sockaddr_in echo_addr;
static int ep, rec_size, frame_size;
static uint8_t *frame_tmpl;            /* one whole record, patched per frame */
static uint8_t *scratch;
static size_t scratch_cap;
static int sending = 1, measuring = 0;
static uint64_t rx_total, rx_window, tx_total;

static void ep_mod(struct tunnel *t, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = t};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, t->fd, &ev) != 0) die("epoll_ctl mod");
}

static void queue_bytes(struct tunnel *t, const void *p, size_t n) {
    memcpy(t->wbuf + t->wlen, p, n);
    t->wlen += n;
}

static void queue_frame(struct tunnel *t) {
    uint8_t *f = t->wbuf + t->wlen;
    memcpy(f, frame_tmpl, rec_size);
    uint8_t *pkt = f + HDR + ADDR4;
    uint64_t ts = now_ns();
    memcpy(pkt, &t->id, 4);
    memcpy(pkt + 4, &t->seq, 4);
    memcpy(pkt + 8, &ts, 8);
    t->seq++;
    t->wlen += rec_size;
    t->inflight++;
    tx_total++;
}

static void flush(struct tunnel *t) {
    while (t->woff < t->wlen) {
        ssize_t n = send(t->fd, t->wbuf + t->woff, t->wlen - t->woff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) break;
            if (errno == EINTR) continue;
            fprintf(stderr, "loadgen: tunnel %u send: %s\n", t->id, strerror(errno));
            exit(3);
        }
        t->woff += n;
    }
    if (t->woff == t->wlen) t->woff = t->wlen = 0;
    int want_out = t->wlen > 0;
    if (want_out != t->epout) {
        t->epout = want_out;
        ep_mod(t, EPOLLIN | (want_out ? EPOLLOUT : 0));
    }
}

static void start_connect(struct tunnel *t) {
    t->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (t->fd < 0) die("socket");
    int one = 1;
    /* Frames are written as soon as they are due; Nagle would add delay, not batching. */
    setsockopt(t->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(t->fd, (struct sockaddr *)&O.target, sizeof(O.target)) != 0 && errno != EINPROGRESS) die("connect");
    t->state = T_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = t};
    t->epout = 1;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, t->fd, &ev) != 0) die("epoll_ctl add");
}

static int on_connected(struct tunnel *t, int frames) {
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) { fprintf(stderr, "loadgen: tunnel %u connect: %s\n", t->id, strerror(err)); exit(3); }
    t->state = T_OPEN;
    static const uint8_t hello[HDR + 4] = {0x17, 0x03, 0x03, 0x00, 0x04, 1, 12, 0, 0};
    queue_bytes(t, hello, sizeof(hello));
    for (int i = 0; i < frames; i++) queue_frame(t);
    t->epout = 1;
    ep_mod(t, EPOLLIN | EPOLLOUT);
    flush(t);
    return 1;
}

/* Consumes whole records from buf; returns how many frames completed. */
static int parse_records(struct tunnel *t, uint8_t *buf, size_t len, size_t *used, uint64_t now) {
    size_t off = 0;
    int done = 0;
    while (len - off >= HDR) {
        uint8_t *r = buf + off;
        if (r[0] != 0x17 || r[1] != 0x03 || r[2] != 0x03) fail("reply is not a 17 03 03 record");
        size_t plen = ((size_t)r[3] << 8) | r[4];
        if (plen != (size_t)frame_size) {
            fprintf(stderr, "loadgen: tunnel %u reply payload %zu bytes, expected %d\n", t->id, plen, frame_size);
            exit(3);
        }
        if (len - off < HDR + plen) break;
        uint8_t *p = r + HDR;
        if (p[0] != 4 || memcmp(p + 1, &echo_addr.sin_addr, 4) != 0 || memcmp(p + 5, &echo_addr.sin_port, 2) != 0)
            fail("reply does not carry the echo peer's IPv4 address and port");
        uint32_t id;
        uint64_t ts;
        memcpy(&id, p + ADDR4, 4);
        memcpy(&ts, p + ADDR4 + 8, 8);
        if (id != t->id) {
            fprintf(stderr, "loadgen: tunnel %u got tunnel %u's frame\n", t->id, id);
            exit(3);
        }
        if (measuring) { hist_add(now - ts); rx_window++; }
        rx_total++;
        t->inflight--;
        done++;
        off += HDR + plen;
    }
    *used = off;
    return done;
}

/* Returns frames completed, or -1 when the relay closed the tunnel. */
static int on_readable(struct tunnel *t) {
    int total = 0;
    for (;;) {
        memcpy(scratch, t->carry, t->carry_len);
        ssize_t n = recv(t->fd, scratch + t->carry_len, scratch_cap - t->carry_len, 0);
        if (n == 0) return -1;
        if (n < 0) {
            if (errno == EAGAIN) break;
            if (errno == EINTR) continue;
            if (errno == ECONNRESET) return -1;
            die("recv");
        }
        size_t have = t->carry_len + n, used;
        total += parse_records(t, scratch, have, &used, now_ns());
        t->carry_len = have - used;
        memcpy(t->carry, scratch + used, t->carry_len);
        if ((size_t)n < scratch_cap - t->carry_len) break;   /* short read: socket drained */
    }
    return total;
}

static struct tunnel *make_tunnels(int n, int wframes) {
    struct tunnel *ts = calloc(n, sizeof(*ts));
    if (!ts) die("calloc");
    for (int i = 0; i < n; i++) {
        ts[i].id = (uint32_t)i;
        ts[i].carry = malloc(rec_size);
        ts[i].wbuf = malloc((size_t)(HDR + 4) + (size_t)wframes * rec_size);
        if (!ts[i].carry || !ts[i].wbuf) die("malloc");
    }
    return ts;
}

static void build_template(void) {
    frame_size = ADDR4 + O.size;
    rec_size = HDR + frame_size;
    frame_tmpl = malloc(rec_size);
    uint8_t *r = frame_tmpl;
    r[0] = 0x17; r[1] = 0x03; r[2] = 0x03; r[3] = frame_size >> 8; r[4] = frame_size & 0xff;
    r[5] = 4;
    memcpy(r + 6, &echo_addr.sin_addr, 4);
    memcpy(r + 10, &echo_addr.sin_port, 2);
    for (int i = HDR + ADDR4; i < rec_size; i++) r[i] = (uint8_t)(i * 7);
    scratch_cap = 256 * 1024 + rec_size;
    scratch = malloc(scratch_cap + rec_size);
}

static int run_frames(void) {
    struct tunnel *ts = make_tunnels(O.tunnels, O.inflight);
    int open = 0;
    for (int i = 0; i < O.tunnels; i++) start_connect(&ts[i]);
    struct epoll_event evs[MAX_EVENTS];
    uint64_t t_start = 0, t_measure = 0, t_end = 0, t_stop = 0, t_drain_end = 0;
    uint64_t connect_deadline = now_ns() + (uint64_t)(O.ready_timeout * 1e9);
    double cpu0 = 0, cpu1 = 0;
    if (O.busy_poll) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &echo};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, echo.fd, &ev) != 0) die("epoll_ctl echo");
    }
    for (;;) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, O.busy_poll == 1 ? 0 : 10);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &echo) { echo_batch(&echo, MSG_DONTWAIT); continue; }
            struct tunnel *t = evs[i].data.ptr;
            if (t->state == T_CONNECTING) {
                if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) { on_connected(t, O.inflight); open++; }
                continue;
            }
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                int got = on_readable(t);
                if (got < 0) { fprintf(stderr, "loadgen: relay closed tunnel %u\n", t->id); exit(3); }
                if (sending) for (int k = 0; k < got; k++) queue_frame(t);
                if (got || t->wlen) flush(t);
            } else if (evs[i].events & EPOLLOUT) {
                flush(t);
            }
        }
        uint64_t now = now_ns();
        if (!t_start && open == O.tunnels) {
            t_start = now;
            t_measure = t_start + (uint64_t)(O.warmup * 1e9);
            t_end = t_measure + (uint64_t)(O.duration * 1e9);
            printf("# connected %d tunnels\n", open);
            fflush(stdout);
        }
        if (!t_start) {
            if (now >= connect_deadline) {
                fprintf(stderr, "loadgen: only %d of %d tunnels connected within %.0f s\n", open, O.tunnels, O.ready_timeout);
                exit(3);
            }
            continue;
        }
        if (!measuring && !t_stop && now >= t_measure) {
            measuring = 1;
            t_measure = now;
            cpu0 = cpu_seconds();
            printf("# measure start\n");
            fflush(stdout);
        }
        if (measuring && now >= t_end) {
            measuring = 0;
            sending = 0;
            t_stop = now;
            cpu1 = cpu_seconds();
            t_drain_end = now + 2000000000ull;
            printf("# measure end\n");
            fflush(stdout);
        }
        if (t_stop) {
            long outstanding = 0;
            for (int i = 0; i < O.tunnels; i++) outstanding += ts[i].inflight;
            if (outstanding == 0 || now >= t_drain_end) {
                double secs = (t_stop - t_measure) / 1e9;
                printf("{\"mode\":\"frames\",\"tunnels\":%d,\"size\":%d,\"inflight\":%d,"
                       "\"seconds\":%.3f,\"frames\":%llu,\"frames_per_s\":%.0f,"
                       "\"p50_us\":%.0f,\"p90_us\":%.0f,\"p99_us\":%.0f,\"over_1s\":%llu,"
                       "\"lost\":%ld,\"sent\":%llu,\"received\":%llu,\"echoed\":%llu,"
                       "\"loadgen_cpu_pct\":%.1f}\n",
                       O.tunnels, O.size, O.inflight, secs, (unsigned long long)rx_window,
                       rx_window / secs, hist_pct(0.5), hist_pct(0.9), hist_pct(0.99),
                       (unsigned long long)hist_over, outstanding, (unsigned long long)tx_total,
                       (unsigned long long)rx_total, (unsigned long long)atomic_load(&echo_datagrams),
                       100.0 * (cpu1 - cpu0) / secs);
                fflush(stdout);
                return 0;
            }
        }
    }
}

/* Holds N tunnels open; the driver measures RSS between the JSON line and closing stdin. */
static int run_idle(void) {
    struct tunnel *ts = make_tunnels(O.tunnels, 1);
    int next = 0, pending = 0, ready = 0, closed = 0, announced = 0;
    uint64_t t0 = now_ns(), deadline = t0 + (uint64_t)(O.ready_timeout * 1e9);
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev) != 0) die("epoll_ctl stdin");
    int *got_echo = calloc(O.tunnels, sizeof(int));
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        /* Pace connects: a burst of 8,000 SYNs overflows the relay's accept backlog. */
        while (next < O.tunnels && pending < O.connect_batch) { start_connect(&ts[next++]); pending++; }
        int n = epoll_wait(ep, evs, MAX_EVENTS, 50);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct tunnel *t = evs[i].data.ptr;
            if (!t) {   /* stdin: EOF (or anything) means the driver is done measuring */
                if (!announced) continue;
                printf("{\"mode\":\"idle_end\",\"closed_by_relay\":%d}\n", closed);
                fflush(stdout);
                return 0;
            }
            if (t->state == T_CONNECTING) {
                if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(t, 1);
                continue;
            }
            if (t->state != T_OPEN) continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                int got = on_readable(t);
                if (got < 0) {
                    closed++;
                    t->state = T_CLOSED;
                    epoll_ctl(ep, EPOLL_CTL_DEL, t->fd, NULL);
                    close(t->fd);
                    if (!got_echo[t->id]) pending--;
                    continue;
                }
                if (got > 0 && !got_echo[t->id]) { got_echo[t->id] = 1; ready++; pending--; }
            }
            if (evs[i].events & EPOLLOUT) flush(t);
        }
        uint64_t now = now_ns();
        if (!announced && (ready == O.tunnels || now >= deadline || ready + closed == O.tunnels)) {
            announced = 1;
            printf("{\"mode\":\"idle\",\"tunnels\":%d,\"ready\":%d,\"closed_by_relay\":%d,\"setup_s\":%.2f}\n",
                   O.tunnels, ready, closed, (now - t0) / 1e9);
            fflush(stdout);
        }
    }
}

/* ---- udp mode: M sockets, K datagrams in flight each, against an external echo ---- */

static int run_udp(void) {
    int m = O.tunnels, k = O.inflight;
    int *fds = calloc(m, sizeof(int)), *inflight = calloc(m, sizeof(int));
    uint64_t *last_rx = calloc(m, sizeof(uint64_t));
    uint64_t lost = 0, sent = 0;
    /* One batch of k datagrams per socket each way: recvmmsg/sendmmsg, one syscall each. */
    uint8_t *rbufs = malloc((size_t)k * 65536), *sbufs = calloc(k, O.size);
    struct mmsghdr *rmsg = calloc(k, sizeof(*rmsg)), *smsg = calloc(k, sizeof(*smsg));
    struct iovec *riov = calloc(k, sizeof(*riov)), *siov = calloc(k, sizeof(*siov));
    for (int j = 0; j < k; j++) {
        riov[j].iov_base = rbufs + (size_t)j * 65536;
        riov[j].iov_len = 65536;
        rmsg[j].msg_hdr.msg_iov = &riov[j];
        rmsg[j].msg_hdr.msg_iovlen = 1;
        siov[j].iov_base = sbufs + (size_t)j * O.size;
        siov[j].iov_len = O.size;
        smsg[j].msg_hdr.msg_iov = &siov[j];
        smsg[j].msg_hdr.msg_iovlen = 1;
    }
    for (int i = 0; i < m; i++) {
        fds[i] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (fds[i] < 0) die("udp socket");
        if (connect(fds[i], (struct sockaddr *)&O.target, sizeof(O.target)) != 0) die("udp connect");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) != 0) die("epoll_ctl");
    }
    /* Sends n stamped datagrams on socket i (n <= k). */
#define UDP_SEND(i, n) do { uint64_t ts_ = now_ns(); uint32_t id_ = (uint32_t)(i); \
        for (int j_ = 0; j_ < (n); j_++) { memcpy(sbufs + (size_t)j_ * O.size, &id_, 4); \
                                            memcpy(sbufs + (size_t)j_ * O.size + 8, &ts_, 8); } \
        int s_ = sendmmsg(fds[i], smsg, (n), 0); \
        if (s_ > 0) { inflight[i] += s_; sent += s_; } } while (0)
    uint64_t t0 = now_ns();
    for (int i = 0; i < m; i++) { last_rx[i] = t0; UDP_SEND(i, k); }
    uint64_t t_measure = t0 + (uint64_t)(O.warmup * 1e9), t_end = t_measure + (uint64_t)(O.duration * 1e9);
    double cpu0 = 0, cpu1 = 0;
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, 10);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        uint64_t now = now_ns();
        for (int e = 0; e < n; e++) {
            int i = evs[e].data.u32;
            for (int j = 0; j < k; j++) rmsg[j].msg_len = 0;
            int r = recvmmsg(fds[i], rmsg, k, MSG_DONTWAIT, NULL);
            if (r < 0) {
                if (errno == EAGAIN) continue;
                if (errno == ECONNREFUSED) fail("udp echo target refused (not listening)");
                die("udp recvmmsg");
            }
            for (int j = 0; j < r; j++) {
                uint8_t *d = rbufs + (size_t)j * 65536;
                uint32_t id;
                uint64_t ts;
                if (rmsg[j].msg_len != (unsigned)O.size) fail("udp echo returned a datagram of another size");
                memcpy(&id, d, 4);
                memcpy(&ts, d + 8, 8);
                if (id != (uint32_t)i) fail("udp echo returned another socket's datagram");
                if (measuring) { hist_add(now - ts); rx_window++; }
                if (inflight[i] > 0) inflight[i]--;
            }
            if (r > 0) { last_rx[i] = now; UDP_SEND(i, r); }
        }
        /* UDP may drop under overload: refill a window that has been silent for 200 ms. */
        for (int i = 0; i < m; i++)
            if (now - last_rx[i] > 200000000ull) {
                lost += inflight[i];
                inflight[i] = 0;
                last_rx[i] = now;
                UDP_SEND(i, k);
            }
        if (!measuring && now >= t_measure && now < t_end) { measuring = 1; t_measure = now; cpu0 = cpu_seconds(); }
        if (measuring && now >= t_end) {
            cpu1 = cpu_seconds();
            double secs = (now - t_measure) / 1e9;
            printf("{\"mode\":\"udp\",\"sockets\":%d,\"size\":%d,\"inflight\":%d,\"seconds\":%.3f,"
                   "\"datagrams\":%llu,\"datagrams_per_s\":%.0f,\"p50_us\":%.0f,\"p99_us\":%.0f,"
                   "\"lost\":%llu,\"sent\":%llu,\"loadgen_cpu_pct\":%.1f}\n",
                   m, O.size, k, secs, (unsigned long long)rx_window, rx_window / secs,
                   hist_pct(0.5), hist_pct(0.99), (unsigned long long)lost, (unsigned long long)sent,
                   100.0 * (cpu1 - cpu0) / secs);
            fflush(stdout);
            return 0;
        }
    }
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    O = parse_opts(argc, argv);
    hist = calloc(HIST_US, sizeof(uint32_t));
    ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    if (!strcmp(O.mode, "udp")) { raise_nofile(O.tunnels + 64); return run_udp(); }
    if (strcmp(O.mode, "frames") && strcmp(O.mode, "idle")) usage();
    raise_nofile(O.tunnels + 64);
    pthread_t echo_thr;
    int echo_thread = !(O.busy_poll && !strcmp(O.mode, "frames"));
    start_echo(&echo_addr, O.size + 64);
    if (echo_thread && pthread_create(&echo_thr, NULL, echo_main, &echo) != 0) die("pthread_create");
    build_template();
    int rc = !strcmp(O.mode, "frames") ? run_frames() : run_idle();
    atomic_store(&echo_stop, 1);
    if (echo_thread) pthread_join(echo_thr, NULL);
    return rc;
}
