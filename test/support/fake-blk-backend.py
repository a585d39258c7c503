#!/usr/bin/env python3
# A hostile or failing vhost-user-blk back-end for VirtioBlkGuest's tests,
# written from the spec with Python's socket.recv_fds and mmap (nothing of the
# library): it takes the memory table and ring fds like a real back-end, then
# answers the first request on queue 0 per MODE:
#   bogus-head   a used entry naming descriptor 1000 (never posted)
#   ioerr        the request completed with status VIRTIO_BLK_S_IOERR (1)
#   unsupp       the request completed with status VIRTIO_BLK_S_UNSUPP (2)
# Usage: fake-blk-backend.py SOCKET MODE. Prints "listening" when ready.
import mmap, os, select, socket, struct, sys

path, mode = sys.argv[1], sys.argv[2]
CAPACITY = 2048  # sectors
FEATURES = (1 << 32) | (1 << 30)  # VERSION_1, PROTOCOL_FEATURES
PROTOCOL = (1 << 3) | (1 << 9)  # REPLY_ACK, CONFIG

if os.path.exists(path):
    os.unlink(path)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(1)
print("listening", flush=True)
conn, _ = srv.accept()

regions = []  # (gpa, size, uaddr, mapping)
ring = {}
kick = call = None


def recv_exact(n):
    data, fds = b"", []
    while len(data) < n:
        chunk, got, _, _ = socket.recv_fds(conn, n - len(data), 8)
        if not chunk:
            sys.exit(0)
        data += chunk
        fds += got
    return data, fds


def reply(request, payload):
    conn.sendall(struct.pack("<III", request, 0x5, len(payload)) + payload)


def by_uaddr(addr):
    for gpa, size, uaddr, m in regions:
        if uaddr <= addr < uaddr + size:
            return m, addr - uaddr
    raise SystemExit("address outside the memory table")


def by_gpa(addr):
    for gpa, size, uaddr, m in regions:
        if gpa <= addr < gpa + size:
            return m, addr - gpa
    raise SystemExit("guest address outside the memory table")


def serve_request():
    m, avail = by_uaddr(ring["avail"])
    head = struct.unpack_from("<H", m, avail + 4)[0]  # ring[0]
    um, used = by_uaddr(ring["used"])
    if mode == "bogus-head":
        struct.pack_into("<II", um, used + 4, 1000, 0)
    else:
        dm, desc = by_uaddr(ring["desc"])
        i = head
        while True:  # the last descriptor of the chain holds the status byte
            addr, length, flags, nxt = struct.unpack_from("<QIHH", dm, desc + 16 * i)
            if not flags & 1:
                break
            i = nxt
        sm, off = by_gpa(addr)
        sm[off] = 1 if mode == "ioerr" else 2
        struct.pack_into("<II", um, used + 4, head, 1)
    struct.pack_into("<H", um, used + 2, 1)  # used->idx
    os.write(call, struct.pack("<Q", 1))


while True:
    ready, _, _ = select.select([conn] + ([kick] if kick is not None else []), [], [])
    if kick in ready:
        os.read(kick, 8)
        serve_request()
        kick = None  # one answer only
        continue
    header, fds = recv_exact(12)
    request, flags, size = struct.unpack("<III", header)
    payload, more = recv_exact(size) if size else (b"", [])
    fds += more
    if request == 1:
        reply(1, struct.pack("<Q", FEATURES))
    elif request == 15:
        reply(15, struct.pack("<Q", PROTOCOL))
    elif request == 24:
        body = bytearray(payload)
        struct.pack_into("<Q", body, 12, CAPACITY)
        reply(24, bytes(body))
    else:
        if request == 5:
            (n,) = struct.unpack_from("<I", payload, 0)
            for k in range(n):
                gpa, size_, uaddr, off = struct.unpack_from("<QQQQ", payload, 8 + 32 * k)
                regions.append((gpa, size_, uaddr, mmap.mmap(fds[k], size_ + off, mmap.MAP_SHARED, offset=0)))
        elif request == 9:
            _, _, ring["desc"], ring["used"], ring["avail"], _ = struct.unpack("<IIQQQQ", payload)
        elif request == 12:
            kick = fds[0]
        elif request == 13:
            call = fds[0]
        if flags & 0x8:
            reply(request, struct.pack("<Q", 0))
