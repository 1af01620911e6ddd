/*
 * The kernel's SG_IO path to an iSCSI LUN, in userspace, for tests.
 *
 * Built twice from this file:
 *
 *   sg_iscsid SOCKET URL INITIATOR   (cc -DSG_ISCSI_DAEMON … -liscsi)
 *       holds one iSCSI session to URL (iscsi://host:port/<iqn>/<lun>)
 *       as INITIATOR — one simulated node's kernel session, one I_T nexus
 *       for as long as it runs — and executes the command blocks it is
 *       sent on the unix socket SOCKET, one at a time.
 *
 *   sg_iscsi.so                      (cc -shared -fPIC …)
 *       preloaded into sg3-utils' tools (sg_persist, sg_raw) with
 *       SG_ISCSI_SOCKET=SOCKET: answers every SG_IO ioctl by forwarding the
 *       command block to that daemon. The "device" the tool opens is any
 *       regular file; everything else the tool does is untouched.
 *
 * The target, not this file, decides what happens (persistent
 * reservations, RESERVATION CONFLICT).
 *
 * Wire format, request: u8 cdb_len, u8 direction (0 none, 1 read, 2 write),
 * u32 transfer length, cdb, then the data for a write. Reply: u8 status
 * (0xff: the command did not reach the target), u8 sense key, u16 asc<<8|ascq,
 * u32 data length, then the data of a read.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <scsi/sg.h>

static int full(ssize_t (*op)(int, void *, size_t), int fd, void *buf, size_t len) {
    uint8_t *p = buf;
    while (len) {
        ssize_t n = op(fd, p, len);
        if (n <= 0)
            return -1;
        p += n;
        len -= n;
    }
    return 0;
}
static ssize_t rd(int fd, void *b, size_t n) { return read(fd, b, n); }
static ssize_t wr(int fd, void *b, size_t n) { return write(fd, b, n); }

#ifdef SG_ISCSI_DAEMON
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

static void serve(struct iscsi_context *c, int lun, int fd) {
    for (;;) {
        uint8_t head[6], cdb[16];
        if (full(rd, fd, head, 6))
            return;
        uint32_t len;
        memcpy(&len, head + 2, 4);
        if (head[0] > 16 || len > (1 << 20) || full(rd, fd, cdb, head[0]))
            return;
        uint8_t *data = len ? malloc(len) : NULL;
        if (head[1] == 2 && full(rd, fd, data, len))
            return;
        struct scsi_task *task = calloc(1, sizeof(*task));
        task->cdb_size = head[0];
        memcpy(task->cdb, cdb, head[0]);
        task->xfer_dir = head[1] == 1 ? SCSI_XFER_READ : head[1] == 2 ? SCSI_XFER_WRITE : SCSI_XFER_NONE;
        task->expxferlen = head[1] ? len : 0;
        struct iscsi_data out = {len, data};
        uint8_t reply[8] = {0xff};
        uint32_t got = 0;
        if (iscsi_scsi_command_sync(c, lun, task, head[1] == 2 ? &out : NULL) &&
            task->status >= 0) {
            reply[0] = task->status;
            reply[1] = task->sense.key;
            reply[2] = task->sense.ascq >> 8;
            reply[3] = task->sense.ascq;
            if (head[1] == 1 && task->status == SCSI_STATUS_GOOD) {
                got = task->datain.size < (int)len ? task->datain.size : len;
                memcpy(data, task->datain.data, got);
            }
        } else {
            fprintf(stderr, "sg_iscsid: %s\n", iscsi_get_error(c));
        }
        memcpy(reply + 4, &got, 4);
        if (full(wr, fd, reply, 8) || full(wr, fd, data, got))
            return;
        free(data);
        scsi_free_scsi_task(task);
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: sg_iscsid SOCKET URL INITIATOR\n");
        return 2;
    }
    struct iscsi_context *c = iscsi_create_context(argv[3]);
    struct iscsi_url *url = iscsi_parse_full_url(c, argv[2]);
    if (!url) {
        fprintf(stderr, "sg_iscsid: bad url %s: %s\n", argv[2], iscsi_get_error(c));
        return 1;
    }
    iscsi_set_session_type(c, ISCSI_SESSION_NORMAL);
    iscsi_set_header_digest(c, ISCSI_HEADER_DIGEST_NONE);
    iscsi_set_targetname(c, url->target);
    if (iscsi_full_connect_sync(c, url->portal, url->lun) != 0) {
        fprintf(stderr, "sg_iscsid: login to %s failed: %s\n", argv[2], iscsi_get_error(c));
        return 1;
    }
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, argv[1], sizeof(a.sun_path) - 1);
    if (bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 8)) {
        perror("sg_iscsid: bind");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int fd = accept(s, NULL, NULL);
        if (fd < 0)
            continue;
        serve(c, url->lun, fd);
        close(fd);
    }
}

#else /* the preloaded shim */

static int daemon_fd = -1;

static int forward(sg_io_hdr_t *h) {
    h->status = h->masked_status = h->msg_status = 0;
    h->host_status = h->driver_status = 0;
    h->sb_len_wr = 0;
    h->resid = 0;
    h->duration = 0;
    h->info = 0;
    const char *path = getenv("SG_ISCSI_SOCKET");
    if (daemon_fd < 0 && path) {
        daemon_fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strncpy(a.sun_path, path, sizeof(a.sun_path) - 1);
        if (connect(daemon_fd, (struct sockaddr *)&a, sizeof(a))) {
            close(daemon_fd);
            daemon_fd = -1;
        }
    }
    uint8_t dir = h->dxfer_direction == SG_DXFER_TO_DEV     ? 2
                  : h->dxfer_direction == SG_DXFER_FROM_DEV ? 1
                                                            : 0;
    uint32_t len = dir ? h->dxfer_len : 0;
    uint8_t head[6] = {h->cmd_len, dir};
    memcpy(head + 2, &len, 4);
    uint8_t reply[8];
    uint32_t got;
    if (daemon_fd < 0 || full(wr, daemon_fd, head, 6) ||
        full(wr, daemon_fd, h->cmdp, h->cmd_len) ||
        (dir == 2 && full(wr, daemon_fd, h->dxferp, len)) ||
        full(rd, daemon_fd, reply, 8) || (memcpy(&got, reply + 4, 4), got > len) ||
        (dir == 1 && full(rd, daemon_fd, h->dxferp, got)) || reply[0] == 0xff) {
        h->host_status = 0x01; /* DID_NO_CONNECT */
        h->info = SG_INFO_CHECK;
        return 0;
    }
    h->status = reply[0];
    h->masked_status = reply[0] >> 1;
    if (dir == 1)
        h->resid = len - got;
    if (reply[0] == 0x02 && h->sbp && h->mx_sb_len >= 14) {
        uint8_t *s = h->sbp;
        memset(s, 0, h->mx_sb_len);
        s[0] = 0x70;
        s[2] = reply[1] & 0x0f;
        s[7] = 10;
        s[12] = reply[2];
        s[13] = reply[3];
        h->sb_len_wr = h->mx_sb_len < 18 ? h->mx_sb_len : 18;
        h->driver_status = 0x08; /* DRIVER_SENSE */
    }
    if (h->status || h->driver_status)
        h->info = SG_INFO_CHECK;
    return 0;
}

int ioctl(int fd, unsigned long req, ...) {
    static int (*real)(int, unsigned long, ...);
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (req == SG_IO)
        return forward(arg);
    if (req == SG_GET_VERSION_NUM) {
        *(int *)arg = 30527;
        return 0;
    }
    if (!real)
        real = dlsym(RTLD_NEXT, "ioctl");
    return real(fd, req, arg);
}
#endif
