// Reference for `npm run bench`: brings a vhost-net or vhost-vsock device up
// and tears it down with plain ioctls, the very sequence bench/bringup.ts
// drives through the library, and prints one JSON line per timed iteration:
//   {"variant":"c","device":"net","us":123.456}
//
//   bringup net|vsock ITERATIONS [--warmup N] [--tap NAME] [--cid CID]
//
// Guest memory (a 1 MiB memfd, MAP_SHARED) is made once outside the timed
// loop, as the Node side does with GuestMemory. Everything else (tap,
// eventfds, device fd) is opened and closed inside it. Exit 1 on any failed
// syscall, naming it.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/vhost.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE (1u << 20)
#define QUEUE_SIZE 256u
#define RING_STRIDE 0x10000u          // queue q's ring at guest-physical q * 64 KiB
#define VNET_HDR_SIZE 12              // what Tap.create sets by default

static const char* device;
static const char* tap_name = "lvbench-c";
static unsigned long long cid = 100000;
static void* mem_hva;

static void die(const char* what) {
  fprintf(stderr, "bringup: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void xioctl(int fd, unsigned long req, void* arg, const char* name) {
  if (ioctl(fd, req, arg) < 0) die(name);
}

static int xopen(const char* path, int flags) {
  int fd = open(path, flags);
  if (fd < 0) die(path);
  return fd;
}

static void xclose(int fd) {
  if (close(fd) < 0) die("close");
}

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

// Split ring of QUEUE_SIZE entries at guest-physical `base`, laid out as
// lib/virtio/vring.ts layoutSplitRing does (desc, avail, used 4-aligned, with event idx).
struct ring { uint64_t desc, avail, used; };

static struct ring ring_at(uint64_t base) {
  struct ring r;
  r.desc = base;
  r.avail = r.desc + 16 * QUEUE_SIZE;
  r.used = (r.avail + 4 + 2 * QUEUE_SIZE + 2 + 3) & ~3ull;
  return r;
}

static uint64_t hva(uint64_t gpa) { return (uint64_t)(uintptr_t)mem_hva + gpa; }

// Owner, features, memory table, then NUM/BASE/ADDR/KICK/CALL for both queues.
static void setup_device(int dev, const int kick[2], const int call[2]) {
  xioctl(dev, VHOST_SET_OWNER, NULL, "VHOST_SET_OWNER");
  uint64_t features;
  xioctl(dev, VHOST_GET_FEATURES, &features, "VHOST_GET_FEATURES");
  features &= 1ull << VIRTIO_F_VERSION_1;  // acknowledge VERSION_1 only
  xioctl(dev, VHOST_SET_FEATURES, &features, "VHOST_SET_FEATURES");

  union {
    struct vhost_memory hdr;
    char bytes[sizeof(struct vhost_memory) + sizeof(struct vhost_memory_region)];
  } table;
  memset(&table, 0, sizeof table);
  table.hdr.nregions = 1;
  table.hdr.regions[0].guest_phys_addr = 0;
  table.hdr.regions[0].memory_size = MEM_SIZE;
  table.hdr.regions[0].userspace_addr = hva(0);
  xioctl(dev, VHOST_SET_MEM_TABLE, &table.hdr, "VHOST_SET_MEM_TABLE");

  for (unsigned q = 0; q < 2; q++) {
    struct vhost_vring_state num = {.index = q, .num = QUEUE_SIZE};
    xioctl(dev, VHOST_SET_VRING_NUM, &num, "VHOST_SET_VRING_NUM");
    struct vhost_vring_state base = {.index = q, .num = 0};
    xioctl(dev, VHOST_SET_VRING_BASE, &base, "VHOST_SET_VRING_BASE");
    struct ring r = ring_at((uint64_t)q * RING_STRIDE);
    struct vhost_vring_addr addr = {
        .index = q, .desc_user_addr = hva(r.desc), .avail_user_addr = hva(r.avail), .used_user_addr = hva(r.used)};
    xioctl(dev, VHOST_SET_VRING_ADDR, &addr, "VHOST_SET_VRING_ADDR");
    struct vhost_vring_file k = {.index = q, .fd = kick[q]};
    xioctl(dev, VHOST_SET_VRING_KICK, &k, "VHOST_SET_VRING_KICK");
    struct vhost_vring_file c = {.index = q, .fd = call[q]};
    xioctl(dev, VHOST_SET_VRING_CALL, &c, "VHOST_SET_VRING_CALL");
  }
}

// GET_VRING_BASE for both queues; nothing ran, so both must still be 0.
static void read_bases(int dev) {
  for (unsigned q = 0; q < 2; q++) {
    struct vhost_vring_state s = {.index = q};
    xioctl(dev, VHOST_GET_VRING_BASE, &s, "VHOST_GET_VRING_BASE");
    if (s.num != 0) {
      fprintf(stderr, "bringup: queue %u base %u, expected 0\n", q, s.num);
      exit(1);
    }
  }
}

static void open_eventfds(int kick[2], int call[2]) {
  for (int q = 0; q < 2; q++) {
    kick[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    call[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (kick[q] < 0 || call[q] < 0) die("eventfd");
  }
}

static void close_eventfds(const int kick[2], const int call[2]) {
  for (int q = 0; q < 2; q++) {
    xclose(kick[q]);
    xclose(call[q]);
  }
}

// What Tap.create({ name }) does: open, TUNSETIFF, TUNSETVNETHDRSZ, TUNSETSNDBUF.
static int open_tap(void) {
  int fd = xopen("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", tap_name);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  xioctl(fd, TUNSETIFF, &ifr, "TUNSETIFF");
  int hdr = VNET_HDR_SIZE;
  xioctl(fd, TUNSETVNETHDRSZ, &hdr, "TUNSETVNETHDRSZ");
  int sndbuf = INT_MAX;
  xioctl(fd, TUNSETSNDBUF, &sndbuf, "TUNSETSNDBUF");
  return fd;
}

static void net_cycle(void) {
  int tap = open_tap();
  int kick[2], call[2];
  open_eventfds(kick, call);
  int dev = xopen("/dev/vhost-net", O_RDWR | O_CLOEXEC);
  setup_device(dev, kick, call);
  for (unsigned q = 0; q < 2; q++) {
    struct vhost_vring_file b = {.index = q, .fd = tap};
    xioctl(dev, VHOST_NET_SET_BACKEND, &b, "VHOST_NET_SET_BACKEND");
  }
  // stop: detach both backends, then read the bases back
  for (unsigned q = 0; q < 2; q++) {
    struct vhost_vring_file b = {.index = q, .fd = -1};
    xioctl(dev, VHOST_NET_SET_BACKEND, &b, "VHOST_NET_SET_BACKEND(-1)");
  }
  read_bases(dev);
  xclose(dev);
  xclose(tap);
  close_eventfds(kick, call);
}

static void vsock_cycle(void) {
  int kick[2], call[2];
  open_eventfds(kick, call);
  int dev = xopen("/dev/vhost-vsock", O_RDWR | O_CLOEXEC);
  setup_device(dev, kick, call);
  uint64_t guest_cid = cid;
  xioctl(dev, VHOST_VSOCK_SET_GUEST_CID, &guest_cid, "VHOST_VSOCK_SET_GUEST_CID");
  int running = 1;
  xioctl(dev, VHOST_VSOCK_SET_RUNNING, &running, "VHOST_VSOCK_SET_RUNNING(1)");
  // stop: SET_RUNNING 0, then read the bases back
  running = 0;
  xioctl(dev, VHOST_VSOCK_SET_RUNNING, &running, "VHOST_VSOCK_SET_RUNNING(0)");
  read_bases(dev);
  xclose(dev);
  close_eventfds(kick, call);
}

static void usage(void) {
  fprintf(stderr, "usage: bringup net|vsock ITERATIONS [--warmup N] [--tap NAME] [--cid CID]\n");
  exit(2);
}

static long parse_num(const char* s, long min, long max) {
  char* end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || end == s || v < min || v > max) usage();
  return v;
}

int main(int argc, char** argv) {
  if (argc < 3) usage();
  device = argv[1];
  if (strcmp(device, "net") != 0 && strcmp(device, "vsock") != 0) usage();
  long iterations = parse_num(argv[2], 1, 10000000);
  long warmup = 2;
  for (int i = 3; i < argc; i += 2) {
    if (i + 1 >= argc) usage();
    if (strcmp(argv[i], "--warmup") == 0) warmup = parse_num(argv[i + 1], 0, 10000000);
    else if (strcmp(argv[i], "--tap") == 0) {
      tap_name = argv[i + 1];
      if (strlen(tap_name) == 0 || strlen(tap_name) >= IFNAMSIZ) usage();
    } else if (strcmp(argv[i], "--cid") == 0) cid = (unsigned long long)parse_num(argv[i + 1], 3, 0xfffffffe);
    else usage();
  }

  int memfd = memfd_create("linux-vhost-bench", MFD_CLOEXEC);
  if (memfd < 0) die("memfd_create");
  if (ftruncate(memfd, MEM_SIZE) < 0) die("ftruncate");
  mem_hva = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (mem_hva == MAP_FAILED) die("mmap");

  void (*cycle)(void) = strcmp(device, "net") == 0 ? net_cycle : vsock_cycle;
  for (long i = 0; i < warmup; i++) cycle();
  for (long i = 0; i < iterations; i++) {
    double t0 = now_us();
    cycle();
    double us = now_us() - t0;
    printf("{\"variant\":\"c\",\"device\":\"%s\",\"us\":%.3f}\n", device, us);
  }
  munmap(mem_hva, MEM_SIZE);
  close(memfd);
  return fflush(stdout) == 0 ? 0 : 1;
}
