/*
 * A minimal TCP forwarder in C: the floor a user-space relay could reach on this machine
 * (fallback.py --c-reference compiles and drives it, in the same run as nginx direct and
 * the relay).
 *
 *   forward BACKEND_PORT MODE
 *
 * MODE is when the site is dialed:
 *   accept  right after accept4, before any byte (the lower bound of a relay that could dial
 *           early: the site's accept and TCP handshake overlap the client's ClientHello);
 *   first   when the client's first bytes arrive (what zt-relay must do: it sniffs them
 *           first), and sends them at once, as the relay does (a loopback connect() is
 *           established when it returns; one still under way answers EAGAIN, and EPOLLOUT
 *           brings the bytes).
 *
 * Single thread, level-triggered epoll, non-blocking sockets with TCP_NODELAY, recv/send
 * through one 16 KB buffer per direction (no pipes, no splice). A direction that can't send
 * all it read stops reading until the peer drains (EPOLLOUT): bounded memory, as the relay.
 * EOF is passed on as a half-close; the pair is closed once both directions ended. A side
 * that was reset still passes on what it sent before the reset (readable after it), then
 * the pair closes. Prints the listening port on stdout, then serves until killed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 16384

struct conn;

/* One direction: bytes read from `from`'s socket wait here until written to `to`'s. */
struct side {
    int fd;
    struct conn *c;
    struct side *peer;
    char buf[BUF];          /* read from this side, not yet written to the peer */
    size_t off, len;
    int eof;                /* this side sent FIN (passed on once len == 0) */
    int shut;               /* the peer got our shutdown(SHUT_WR) for it */
    int connecting;         /* backend only: connect() in progress */
    int reset;              /* a recv, send or connect on it failed (see on_reset) */
};

struct conn {
    struct side client, site;
    int dead;               /* closed; freed after this epoll batch (its other side may be in it) */
    struct conn *next_dead;
};

static struct conn *dead_list;

static int epfd;
static struct sockaddr_in backend;
static int dial_at_accept;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* The events a side waits for: readable unless its buffer is full of unsent bytes (or it
 * ended), writable while the peer's bytes wait for it (or its connect is in progress). */
static void update(struct side *s) {
    if (s->fd < 0 || s->reset)
        return;
    struct epoll_event ev = {.events = 0, .data.ptr = s};
    if (!s->eof && s->len == 0 && !s->connecting)
        ev.events |= EPOLLIN;
    if (s->connecting || s->peer->len > 0)
        ev.events |= EPOLLOUT;
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev) < 0)
        die("epoll_ctl mod");
}

static void add(struct side *s, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = s};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev) < 0)
        die("epoll_ctl add");
}

static void close_conn(struct conn *c) {
    if (c->dead)
        return;
    if (c->client.fd >= 0)
        close(c->client.fd);
    if (c->site.fd >= 0)
        close(c->site.fd);
    c->client.fd = c->site.fd = -1;
    c->dead = 1;
    c->next_dead = dead_list;
    dead_list = c;
}

static void dial(struct conn *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0)
        die("socket");
    nodelay(fd);
    c->site.fd = fd;
    c->site.connecting = 0;
    if (connect(fd, (struct sockaddr *)&backend, sizeof backend) < 0) {
        if (errno != EINPROGRESS) {
            perror("connect");
            close_conn(c);
            return;
        }
        c->site.connecting = 1;
    }
    add(&c->site, c->site.connecting ? EPOLLOUT : (c->client.len ? EPOLLIN | EPOLLOUT : EPOLLIN));
}

/* Writes what `from` holds to its peer, also while the peer's connect is under way (EAGAIN
 * until it is done); returns -1 when a send failed (the peer was reset). */
static int flush(struct side *from) {
    struct side *to = from->peer;
    while (from->len > 0) {
        if (to->fd < 0 || to->reset)
            return 0;
        ssize_t n = send(to->fd, from->buf + from->off, from->len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN)
                return 0;
            return -1;
        }
        to->connecting = 0;  /* a send went through: connected */
        from->off += n;
        from->len -= n;
    }
    from->off = 0;
    if (from->eof && !from->shut && to->fd >= 0 && !to->connecting) {
        shutdown(to->fd, SHUT_WR);
        from->shut = 1;
    }
    return 0;
}

/* `r` was reset (a recv or send on it failed, or EPOLLERR): nothing more can reach it, so
 * its peer is not read any more. What `r` sent before the reset is still readable: it is
 * passed on as the peer takes it (from the peer's EPOLLOUT), then the pair closes. */
static void on_reset(struct side *r) {
    struct side *o = r->peer;
    if (o->fd < 0) {            /* a client reset before its first bytes were read: no site yet */
        close_conn(r->c);
        return;
    }
    if (!r->reset) {
        r->reset = 1;
        epoll_ctl(epfd, EPOLL_CTL_DEL, r->fd, NULL);  /* its HUP and ERR would fire every round */
        o->len = 0;             /* bytes for r: undeliverable */
        o->eof = o->shut = 1;   /* o is read no more; nothing to shut towards r */
    }
    for (;;) {
        if (flush(r) < 0) {     /* o failed too */
            close_conn(r->c);
            return;
        }
        if (r->len > 0) {       /* o is full (or still connecting): its EPOLLOUT resumes this */
            update(o);
            return;
        }
        if (r->eof) {           /* everything r sent went on */
            close_conn(r->c);
            return;
        }
        ssize_t n = recv(r->fd, r->buf, BUF, 0);
        if (n <= 0)
            r->eof = 1;         /* the reset itself (or EOF): r's bytes are all in hand */
        else
            r->len = n;
    }
}

/* Returns 1 when the pair was handled (closed, or reset: see on_reset). */
static int on_readable(struct side *s) {
    ssize_t n = recv(s->fd, s->buf, BUF, 0);
    if (n < 0) {
        if (errno == EAGAIN)
            return 0;
        on_reset(s);
        return 1;
    }
    if (n == 0)
        s->eof = 1;
    else
        s->len = n;
    if (s == &s->c->client && s->c->site.fd < 0) {
        dial(s->c);     /* first bytes (or EOF): dial now */
        if (s->c->dead)
            return 1;   /* closed by dial */
    }
    if (flush(s) < 0) {
        on_reset(s->peer);
        return 1;
    }
    return 0;
}

static int done(struct conn *c) {
    return c->client.shut && c->site.shut;
}

static void on_event(struct side *s, uint32_t events) {
    struct conn *c = s->c;
    if (c->dead || s->reset)
        return;
    if (s->connecting && (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            close_conn(c);
            return;
        }
        s->connecting = 0;
    }
    if (events & EPOLLERR) {    /* a reset: what it sent before is still readable */
        on_reset(s);
        return;
    }
    if (events & (EPOLLOUT | EPOLLHUP)) {
        if (flush(s->peer) < 0) {
            on_reset(s);
            return;
        }
        if (s->peer->reset) {   /* s took more of a reset peer's bytes */
            on_reset(s->peer);
            return;
        }
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP)) {
        if (!s->eof && s->len == 0 && on_readable(s))
            return;
    }
    if (done(c)) {
        close_conn(c);
        return;
    }
    update(&c->client);
    update(&c->site);
}

static void on_accept(int listener) {
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                return;
            die("accept4");
        }
        struct conn *c = calloc(1, sizeof *c);
        if (!c)
            die("calloc");
        c->client.fd = fd;
        c->site.fd = -1;
        c->client.c = c->site.c = c;
        c->client.peer = &c->site;
        c->site.peer = &c->client;
        nodelay(fd);  /* the listener's TCP_NODELAY is inherited too; set it anyway */
        add(&c->client, EPOLLIN);
        if (dial_at_accept)
            dial(c);
    }
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[2], "accept") && strcmp(argv[2], "first"))) {
        fprintf(stderr, "usage: %s BACKEND_PORT accept|first\n", argv[0]);
        return 2;
    }
    dial_at_accept = strcmp(argv[2], "accept") == 0;
    backend.sin_family = AF_INET;
    backend.sin_port = htons(atoi(argv[1]));
    backend.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listener < 0)
        die("socket");
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    nodelay(listener);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 1024) < 0)
        die("bind/listen");
    socklen_t len = sizeof addr;
    getsockname(listener, (struct sockaddr *)&addr, &len);
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &ev);
    struct epoll_event events[64];
    for (;;) {
        int n = epoll_wait(epfd, events, 64, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL)
                on_accept(listener);
            else
                on_event(events[i].data.ptr, events[i].events);
        }
        while (dead_list) {
            struct conn *c = dead_list;
            dead_list = c->next_dead;
            free(c);
        }
    }
}
