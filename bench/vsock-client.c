// C reference for bench/vsock.js: a plain blocking AF_VSOCK stream client,
// run against the same guest process (bench/vsock-guest.js) as the Node client.
//
//   vsock-client sink CID PORT TOTAL WRITE
//       sends TOTAL bytes of the bench pattern in write(2) calls of WRITE
//       bytes, shuts down its sending side and reads the guest's answer line;
//       prints "bytes=<sent> seconds=<first write to answer> cpu=<s> reply=<line>"
//   vsock-client echo CID PORT COUNT SIZE
//       COUNT request/responses of SIZE bytes (each request stamped with its
//       index, each answer compared with it); prints
//       "requests=<n> seconds=<first write to last answer> cpu=<s>"
//
// The pattern is the one bench/vsock.js builds: 32-bit words of the LCG
// x = x * 1664525 + 1013904223 from x = 0x12345678, little-endian.
// cpu= is this process's user + system time over the same span. Connecting
// and building the pattern are not timed. Exit 1 on any error or
// wrong answer.
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static void die(const char *what) {
  perror(what);
  exit(1);
}

static unsigned long num(const char *s) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || *end || end == s) {
    fprintf(stderr, "vsock-client: '%s' is not a number\n", s);
    exit(2);
  }
  return v;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* User + system CPU seconds of this process so far. */
static double cpu(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static int connect_to(unsigned cid, unsigned port) {
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket(AF_VSOCK)");
  struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
  return fd;
}

static void write_all(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      die("write");
    }
    p += w;
    n -= (size_t)w;
  }
}

static void read_all(int fd, uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0) {
      if (errno == EINTR) continue;
      die("read");
    }
    if (r == 0) {
      fprintf(stderr, "vsock-client: the guest closed the connection early\n");
      exit(1);
    }
    p += r;
    n -= (size_t)r;
  }
}

static int sink(unsigned cid, unsigned port, size_t total, size_t wsize) {
  uint8_t *buf = malloc(total + 4);
  if (!buf) die("malloc");
  uint32_t x = 0x12345678;
  for (size_t i = 0; i < total; i += 4) {
    x = x * 1664525u + 1013904223u;
    buf[i] = x & 0xff;
    buf[i + 1] = (x >> 8) & 0xff;
    buf[i + 2] = (x >> 16) & 0xff;
    buf[i + 3] = x >> 24;
  }
  int fd = connect_to(cid, port);
  double t0 = now(), c0 = cpu();
  for (size_t off = 0; off < total; off += wsize) write_all(fd, buf + off, total - off < wsize ? total - off : wsize);
  if (shutdown(fd, SHUT_WR) < 0) die("shutdown");
  char reply[256];
  size_t got = 0;
  for (;;) {
    ssize_t r = read(fd, reply + got, sizeof reply - 1 - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      die("read");
    }
    if (r == 0 || (got += (size_t)r) == sizeof reply - 1) break;
  }
  double t1 = now(), c1 = cpu();
  reply[got] = 0;
  char *nl = strchr(reply, '\n');
  if (!nl) {
    fprintf(stderr, "vsock-client: no answer line from the guest (got '%s')\n", reply);
    return 1;
  }
  *nl = 0;
  printf("bytes=%zu seconds=%.6f cpu=%.6f reply=%s\n", total, t1 - t0, c1 - c0, reply);
  close(fd);
  free(buf);
  return 0;
}

static int echo(unsigned cid, unsigned port, unsigned long count, size_t size) {
  uint8_t req[4096], res[4096];
  if (size < 8 || size > sizeof req) {
    fprintf(stderr, "vsock-client: echo SIZE must be in 8..%zu\n", sizeof req);
    return 2;
  }
  memset(req, 'r', size);
  int fd = connect_to(cid, port);
  double t0 = now(), c0 = cpu();
  for (unsigned long i = 0; i < count; i++) {
    memcpy(req, &i, sizeof i);
    write_all(fd, req, size);
    read_all(fd, res, size);
    if (memcmp(req, res, size) != 0) {
      fprintf(stderr, "vsock-client: answer %lu differs from its request\n", i);
      return 1;
    }
  }
  double t1 = now(), c1 = cpu();
  printf("requests=%lu seconds=%.6f cpu=%.6f\n", count, t1 - t0, c1 - c0);
  close(fd);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 6 || (strcmp(argv[1], "sink") && strcmp(argv[1], "echo"))) {
    fprintf(stderr, "usage: vsock-client sink CID PORT TOTAL WRITE | echo CID PORT COUNT SIZE\n");
    return 2;
  }
  unsigned cid = (unsigned)num(argv[2]), port = (unsigned)num(argv[3]);
  if (!strcmp(argv[1], "sink")) {
    size_t total = num(argv[4]), wsize = num(argv[5]);
    if (total % 4 || wsize == 0) {
      fprintf(stderr, "vsock-client: TOTAL must be a multiple of 4 and WRITE positive\n");
      return 2;
    }
    return sink(cid, port, total, wsize);
  }
  return echo(cid, port, num(argv[4]), num(argv[5]));
}
