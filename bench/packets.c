// C reference for bench/packets.js: the same split-ring loop as the Node
// guest (lib/guest/net.ts over native/virtqueue.cc), with the same
// layout and batching, so packets.js can print a Node/C ratio.
//
//   packets tx SIZE FRAMES        guest -> host through vhost-net; prints
//                                 "frames=<arrived> seconds=<s>" (arrival =
//                                 the tap's rx_packets counter, as packets.js)
//   packets rx SIZE FRAMES        host -> guest: forks a sender (below) and
//                                 counts frames taken from the RX ring; prints
//                                 "frames=<received> seconds=<s> sent=<n>"
//                                 (seconds: first frame to last)
//   packets send IFNAME SIZE FRAMES
//                                 the host-side source: sendmmsg() on an
//                                 AF_PACKET socket bound to IFNAME, 64 frames
//                                 per call; prints "sent=<n>"
//
// Device: tap (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, vnet hdr 12), /dev/vhost-net
// with VERSION_1|EVENT_IDX|MRG_RXBUF, one memfd region at GPA 0, rings of
// 256, kick/call eventfds. TX: batches of 64 frames, each copied behind a
// zeroed 12-byte virtio-net header into its own buffer (one descriptor), one
// release store of avail->idx per batch, a kick only when vring_need_event
// says so; used entries are reclaimed before each batch, and when the ring is
// full the loop asks for a call (used_event) and waits on the call eventfd.
// RX: 256 writable 2048-byte buffers, refilled after each collect.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/vhost.h>
#include <linux/virtio_config.h>
#include <linux/virtio_net.h>
#include <linux/virtio_ring.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define QSIZE 256
#define BATCH 64
#define HDR 12
#define TX_SLOT 1600 /* >= 12 + 1500 + 14 + 4, 64-aligned as the Node guest's */
#define RX_SLOT 2048 /* the Node guest's default rxBufferSize */
#define ETHERTYPE 0x88b5
#define PAGE 4096u

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void xioctl(int fd, unsigned long req, void *arg, const char *name) {
  if (ioctl(fd, req, arg) < 0) die(name);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fill_frame(uint8_t *f, unsigned size) {
  memset(f, 0x5a, size);
  memset(f, 0xff, 6);
  f[12] = ETHERTYPE >> 8;
  f[13] = ETHERTYPE & 0xff;
}

/* ---- one split ring, driver side ------------------------------------- */

struct ring {
  uint8_t *mem; /* the whole region (GPA 0) */
  struct vring_desc *desc;
  uint16_t *avail; /* flags, idx, ring[QSIZE], used_event */
  uint16_t *used;  /* flags, idx, then elems; avail_event after them */
  uint64_t pool;   /* GPA of buffer slot 0; slot i belongs to descriptor i */
  unsigned slot;
  uint16_t free_ids[QSIZE];
  unsigned nfree;
  uint16_t avail_idx, last_used, pending;
  int kick, call;
};

#define AVAIL_IDX(r) (&(r)->avail[1])
#define AVAIL_RING(r) (&(r)->avail[2])
#define USED_EVENT(r) (&(r)->avail[2 + QSIZE])
#define USED_IDX(r) (&(r)->used[1])
#define USED_ELEM(r, i) ((struct vring_used_elem *)((r)->used + 2) + (i))
#define AVAIL_EVENT(r) ((uint16_t *)((uint8_t *)((r)->used + 2) + 8 * QSIZE))

/* Ring offsets as lib/virtio/virtqueue.ts placeVirtqueue(): desc, avail, used (4-aligned). */
static size_t avail_off(size_t off) { return off + 16 * QSIZE; }
static size_t used_off(size_t off) { return (avail_off(off) + 6 + 2 * QSIZE + 3) & ~(size_t)3; }
static size_t ring_end(size_t off) { return (used_off(off) + 6 + 8 * QSIZE + 15) & ~(size_t)15; }

static void place(struct ring *r, uint8_t *mem, size_t off) {
  r->mem = mem;
  r->desc = (struct vring_desc *)(mem + off);
  r->avail = (uint16_t *)(mem + avail_off(off));
  r->used = (uint16_t *)(mem + used_off(off));
  r->nfree = QSIZE;
  for (unsigned i = 0; i < QSIZE; i++) r->free_ids[i] = QSIZE - 1 - i;
}

/* Publishes the posted entries with one release store, then kicks if the device asked. */
static void publish(struct ring *r, uint16_t idx) {
  __atomic_store_n(AVAIL_IDX(r), idx, __ATOMIC_RELEASE);
  uint16_t old = r->avail_idx;
  r->avail_idx = idx;
  __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the index before the hint (spec 2.7.13.4) */
  if (vring_need_event(__atomic_load_n(AVAIL_EVENT(r), __ATOMIC_RELAXED), idx, old)) {
    uint64_t one = 1;
    if (write(r->kick, &one, 8) < 0 && errno != EAGAIN) die("write(kick)");
  }
}

/* Takes every used entry; calls done(id, len) for each. Returns the count. */
static unsigned collect(struct ring *r, void (*done)(struct ring *, uint16_t, uint32_t)) {
  uint16_t used = __atomic_load_n(USED_IDX(r), __ATOMIC_ACQUIRE);
  unsigned n = 0;
  while (r->last_used != used) {
    struct vring_used_elem *e = USED_ELEM(r, r->last_used & (QSIZE - 1));
    if (e->id >= QSIZE) {
      fprintf(stderr, "packets: device returned id %u\n", e->id);
      exit(1);
    }
    if (done) done(r, (uint16_t)e->id, e->len);
    r->free_ids[r->nfree++] = (uint16_t)e->id;
    r->last_used++;
    n++;
  }
  return n;
}

/* Asks for a call at the next used entry; true when entries are already there. */
static int enable_calls(struct ring *r) {
  __atomic_store_n(USED_EVENT(r), r->last_used, __ATOMIC_RELAXED);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  return __atomic_load_n(USED_IDX(r), __ATOMIC_ACQUIRE) != r->last_used;
}

static void disable_calls(struct ring *r) {
  __atomic_store_n(USED_EVENT(r), (uint16_t)(r->last_used + 0x8000), __ATOMIC_RELAXED);
}

static void wait_call(struct ring *r, int timeout_ms) {
  struct pollfd p = {.fd = r->call, .events = POLLIN};
  int n = poll(&p, 1, timeout_ms);
  if (n < 0 && errno != EINTR) die("poll(call)");
  uint64_t v;
  if (n > 0 && read(r->call, &v, 8) < 0 && errno != EAGAIN) die("read(call)");
}

/* Posts every free descriptor as one writable RX buffer. */
static void refill(struct ring *r) {
  uint16_t idx = r->avail_idx;
  if (r->nfree == 0) return;
  while (r->nfree > 0) {
    uint16_t d = r->free_ids[--r->nfree];
    r->desc[d].addr = r->pool + (uint64_t)d * r->slot;
    r->desc[d].len = r->slot;
    r->desc[d].flags = VRING_DESC_F_WRITE;
    r->desc[d].next = 0;
    AVAIL_RING(r)[idx & (QSIZE - 1)] = d;
    idx++;
  }
  publish(r, idx);
}

/* ---- device setup ---------------------------------------------------- */

struct dev {
  int tap, vhost, memfd;
  char name[IFNAMSIZ];
  uint8_t *mem;
  size_t len;
  struct ring rx, tx;
};

static void set_up(const char *name) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) die("socket(AF_INET)");
  struct ifreq ifr = {0};
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
  xioctl(s, SIOCGIFFLAGS, &ifr, "ioctl(SIOCGIFFLAGS)");
  ifr.ifr_flags |= IFF_UP;
  xioctl(s, SIOCSIFFLAGS, &ifr, "ioctl(SIOCSIFFLAGS)");
  close(s);
}

static void vring(struct dev *d, unsigned index, struct ring *r) {
  struct vhost_vring_state num = {.index = index, .num = QSIZE};
  xioctl(d->vhost, VHOST_SET_VRING_NUM, &num, "ioctl(VHOST_SET_VRING_NUM)");
  struct vhost_vring_state base = {.index = index, .num = 0};
  xioctl(d->vhost, VHOST_SET_VRING_BASE, &base, "ioctl(VHOST_SET_VRING_BASE)");
  struct vhost_vring_addr addr = {
      .index = index,
      .desc_user_addr = (uintptr_t)r->desc,
      .avail_user_addr = (uintptr_t)r->avail,
      .used_user_addr = (uintptr_t)r->used,
  };
  xioctl(d->vhost, VHOST_SET_VRING_ADDR, &addr, "ioctl(VHOST_SET_VRING_ADDR)");
  r->kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  r->call = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (r->kick < 0 || r->call < 0) die("eventfd");
  struct vhost_vring_file kick = {.index = index, .fd = r->kick};
  xioctl(d->vhost, VHOST_SET_VRING_KICK, &kick, "ioctl(VHOST_SET_VRING_KICK)");
  struct vhost_vring_file call = {.index = index, .fd = r->call};
  xioctl(d->vhost, VHOST_SET_VRING_CALL, &call, "ioctl(VHOST_SET_VRING_CALL)");
}

static void dev_open(struct dev *d) {
  memset(d, 0, sizeof *d);
  d->tap = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (d->tap < 0) die("open(/dev/net/tun)");
  struct ifreq ifr = {0};
  snprintf(ifr.ifr_name, IFNAMSIZ, "lvbc%%d");
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  xioctl(d->tap, TUNSETIFF, &ifr, "ioctl(TUNSETIFF)");
  snprintf(d->name, IFNAMSIZ, "%s", ifr.ifr_name);
  int hdr = HDR;
  xioctl(d->tap, TUNSETVNETHDRSZ, &hdr, "ioctl(TUNSETVNETHDRSZ)");
  set_up(d->name);

  /* Layout as the Node guest: RX ring, TX ring, RX pool, TX pool. */
  size_t txring = ring_end(0);
  size_t off = ring_end(txring);
  size_t rxpool = (off + PAGE - 1) & ~(size_t)(PAGE - 1);
  size_t txpool = (rxpool + (size_t)RX_SLOT * QSIZE + PAGE - 1) & ~(size_t)(PAGE - 1);
  d->len = (txpool + (size_t)TX_SLOT * QSIZE + PAGE - 1) & ~(size_t)(PAGE - 1);
  d->memfd = memfd_create("packets-bench", MFD_CLOEXEC);
  if (d->memfd < 0) die("memfd_create");
  if (ftruncate(d->memfd, d->len) < 0) die("ftruncate");
  d->mem = mmap(NULL, d->len, PROT_READ | PROT_WRITE, MAP_SHARED, d->memfd, 0);
  if (d->mem == MAP_FAILED) die("mmap");
  place(&d->rx, d->mem, 0);
  place(&d->tx, d->mem, txring);
  d->rx.pool = rxpool;
  d->rx.slot = RX_SLOT;
  d->tx.pool = txpool;
  d->tx.slot = TX_SLOT;

  d->vhost = open("/dev/vhost-net", O_RDWR | O_CLOEXEC);
  if (d->vhost < 0) die("open(/dev/vhost-net)");
  xioctl(d->vhost, VHOST_SET_OWNER, NULL, "ioctl(VHOST_SET_OWNER)");
  uint64_t features = (1ULL << VIRTIO_F_VERSION_1) | (1ULL << VIRTIO_RING_F_EVENT_IDX) | (1ULL << VIRTIO_NET_F_MRG_RXBUF);
  xioctl(d->vhost, VHOST_SET_FEATURES, &features, "ioctl(VHOST_SET_FEATURES)");
  struct vhost_memory *table = calloc(1, sizeof *table + sizeof table->regions[0]);
  if (!table) die("calloc");
  table->nregions = 1;
  table->regions[0].guest_phys_addr = 0;
  table->regions[0].memory_size = d->len;
  table->regions[0].userspace_addr = (uintptr_t)d->mem;
  xioctl(d->vhost, VHOST_SET_MEM_TABLE, table, "ioctl(VHOST_SET_MEM_TABLE)");
  free(table);
  vring(d, 0, &d->rx);
  vring(d, 1, &d->tx);
  for (unsigned i = 0; i < 2; i++) {
    struct vhost_vring_file be = {.index = i, .fd = d->tap};
    xioctl(d->vhost, VHOST_NET_SET_BACKEND, &be, "ioctl(VHOST_NET_SET_BACKEND)");
  }
  refill(&d->rx); /* as the Node guest: the RX ring is full from the start */
  disable_calls(&d->tx);
}

static void dev_close(struct dev *d) {
  close(d->vhost);
  close(d->rx.kick);
  close(d->rx.call);
  close(d->tx.kick);
  close(d->tx.call);
  munmap(d->mem, d->len);
  close(d->memfd);
  close(d->tap);
}

static unsigned long rx_packets(const char *name) {
  char path[128];
  snprintf(path, sizeof path, "/sys/class/net/%s/statistics/rx_packets", name);
  FILE *f = fopen(path, "re");
  if (!f) die(path);
  unsigned long n = 0;
  if (fscanf(f, "%lu", &n) != 1) n = 0;
  fclose(f);
  return n;
}

/* Waits until the tap counted n frames since base, or 3 s pass without progress (as packets.js). */
static unsigned long settle(const char *name, unsigned long base, unsigned long n) {
  unsigned long seen = rx_packets(name) - base;
  double idle = now();
  while (seen < n && now() - idle < 3) {
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
    unsigned long cur = rx_packets(name) - base;
    if (cur != seen) idle = now();
    seen = cur;
  }
  return seen;
}

/* ---- modes ----------------------------------------------------------- */

static int tx(unsigned size, unsigned long frames) {
  struct dev d;
  dev_open(&d);
  struct ring *r = &d.tx;
  uint8_t frame[1518];
  fill_frame(frame, size);
  unsigned long base = rx_packets(d.name);
  double t0 = now();
  unsigned long sent = 0;
  while (sent < frames) {
    collect(r, NULL);
    unsigned want = frames - sent < BATCH ? (unsigned)(frames - sent) : BATCH;
    unsigned count = want < r->nfree ? want : r->nfree;
    if (count == 0) { /* ring full: ask for a call, then wait for it */
      if (!enable_calls(r)) wait_call(r, 1000);
      disable_calls(r);
      continue;
    }
    uint16_t idx = r->avail_idx;
    for (unsigned i = 0; i < count; i++) {
      uint16_t id = r->free_ids[--r->nfree];
      uint8_t *buf = d.mem + r->pool + (size_t)id * r->slot;
      memset(buf, 0, HDR); /* no checksum / GSO offload */
      memcpy(buf + HDR, frame, size);
      r->desc[id].addr = r->pool + (uint64_t)id * r->slot;
      r->desc[id].len = HDR + size;
      r->desc[id].flags = 0;
      r->desc[id].next = 0;
      AVAIL_RING(r)[idx & (QSIZE - 1)] = id;
      idx++;
    }
    publish(r, idx);
    sent += count;
  }
  unsigned long arrived = settle(d.name, base, frames);
  double secs = now() - t0;
  dev_close(&d);
  printf("frames=%lu seconds=%.6f\n", arrived, secs);
  return 0;
}

static int send_frames(const char *ifname, unsigned size, unsigned long frames) {
  int s = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0); /* protocol 0: send only */
  if (s < 0) die("socket(AF_PACKET)");
  struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(ifname)};
  if (sll.sll_ifindex == 0) die(ifname);
  if (bind(s, (struct sockaddr *)&sll, sizeof sll) < 0) die("bind(AF_PACKET)");
  uint8_t frame[1518];
  fill_frame(frame, size);
  struct iovec iov = {.iov_base = frame, .iov_len = size};
  struct mmsghdr msgs[BATCH];
  memset(msgs, 0, sizeof msgs);
  for (unsigned i = 0; i < BATCH; i++) {
    msgs[i].msg_hdr.msg_iov = &iov;
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  unsigned long sent = 0;
  while (sent < frames) {
    unsigned want = frames - sent < BATCH ? (unsigned)(frames - sent) : BATCH;
    int n = sendmmsg(s, msgs, want, 0);
    if (n < 0) {
      if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR) continue;
      die("sendmmsg");
    }
    sent += (unsigned)n;
  }
  close(s);
  printf("sent=%lu\n", sent);
  return 0;
}

static unsigned long rx_frames;
static double rx_first, rx_last;
static void rx_done(struct ring *r, uint16_t id, uint32_t len) {
  const uint8_t *buf = r->mem + r->pool + (size_t)id * r->slot;
  /* Frames up to 2036 B fit one buffer (num_buffers 1); only the sender's EtherType counts. */
  if (len >= HDR + 14 && (buf[10] | buf[11] << 8) == 1 && (buf[HDR + 12] << 8 | buf[HDR + 13]) == ETHERTYPE) {
    rx_last = now();
    if (rx_frames++ == 0) rx_first = rx_last;
  }
}

static int rx(const char *self, unsigned size, unsigned long frames) {
  struct dev d;
  dev_open(&d);
  struct ring *r = &d.rx;
  /* The sender runs as its own process, as the host stack would. */
  int out[2];
  if (pipe2(out, O_CLOEXEC) < 0) die("pipe2");
  char sz[16], n[32];
  snprintf(sz, sizeof sz, "%u", size);
  snprintf(n, sizeof n, "%lu", frames);
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    dup2(out[1], 1);
    execl("/proc/self/exe", self, "send", d.name, sz, n, (char *)NULL);
    _exit(127);
  }
  close(out[1]);
  double last = now();
  int exited = 0, status = 0;
  unsigned long before = 0;
  for (;;) {
    before = rx_frames;
    collect(r, rx_done);
    refill(r);
    if (rx_frames != before) {
      last = now();
      continue;
    }
    if (!exited && waitpid(pid, &status, WNOHANG) == pid) exited = 1;
    if (rx_frames >= frames || (exited && now() - last > 0.5)) break;
    if (!enable_calls(r)) wait_call(r, 100);
    disable_calls(r);
  }
  if (!exited) waitpid(pid, &status, 0);
  char buf[64] = {0};
  ssize_t got = read(out[0], buf, sizeof buf - 1);
  close(out[0]);
  dev_close(&d);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || got <= 0) {
    fprintf(stderr, "packets: the sender failed\n");
    return 1;
  }
  buf[strcspn(buf, "\n")] = 0;
  /* Timed from the first frame to the last (the sender's start-up is not the guest's). */
  printf("frames=%lu seconds=%.6f %s\n", rx_frames, rx_last - rx_first, buf);
  return 0;
}

static unsigned long number(const char *s, unsigned long min, unsigned long max) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || *end || end == s || v < min || v > max) {
    fprintf(stderr, "packets: bad number %s (%lu..%lu)\n", s, min, max);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 4 && !strcmp(argv[1], "tx")) return tx(number(argv[2], 14, 1514), number(argv[3], 1, 1UL << 40));
  if (argc == 4 && !strcmp(argv[1], "rx")) return rx(argv[0], number(argv[2], 14, 1514), number(argv[3], 1, 1UL << 40));
  if (argc == 5 && !strcmp(argv[1], "send")) return send_frames(argv[2], number(argv[3], 14, 1514), number(argv[4], 1, 1UL << 40));
  fprintf(stderr, "usage: packets tx SIZE FRAMES | packets rx SIZE FRAMES | packets send IFNAME SIZE FRAMES\n");
  return 2;
}
