/* barpoke: map a PCI resourceN file and load/store one 32-bit register through the mapping.
 *   barpoke RESOURCE OFFSET read
 *   barpoke RESOURCE OFFSET write VALUE
 *   barpoke RESOURCE OFFSET hold VALUE   store VALUE and load it back every 20 ms, forever;
 *                                        one progress line a second
 * A revoked mapping faults on the next access: the process dies of SIGBUS (shell status 135).
 * Static, so it runs in the rig's initramfs without more libraries. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: barpoke RESOURCE OFFSET read|write VALUE|hold VALUE\n");
    return 2;
  }
  unsigned long off = strtoul(argv[2], NULL, 0);
  const char *op = argv[3];
  uint32_t value = argc > 4 ? (uint32_t)strtoul(argv[4], NULL, 0) : 0;
  int fd = open(argv[1], O_RDWR | O_SYNC);
  if (fd < 0) {
    printf("barpoke: open %s: %s\n", argv[1], strerror(errno));
    return 1;
  }
  long page = sysconf(_SC_PAGESIZE);
  size_t len = ((off + 4 + page - 1) / page) * page;
  volatile uint32_t *bar = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (bar == MAP_FAILED) {
    printf("barpoke: mmap %s: %s\n", argv[1], strerror(errno));
    return 1;
  }
  volatile uint32_t *reg = bar + off / 4;
  if (strcmp(op, "read") == 0) {
    printf("barpoke: read %s+%#lx = %#010x\n", argv[1], off, *reg);
  } else if (strcmp(op, "write") == 0) {
    *reg = value;
    printf("barpoke: wrote %#010x, read back %#010x\n", value, *reg);
  } else if (strcmp(op, "hold") == 0) {
    struct timespec tick = {0, 20 * 1000 * 1000};
    for (unsigned long n = 0;; n++) {
      *reg = value;
      uint32_t got = *reg;
      if (n % 50 == 0) {
        printf("barpoke: hold %s iteration %lu read %#010x\n", argv[1], n, got);
        fflush(stdout);
      }
      nanosleep(&tick, NULL);
    }
  } else {
    fprintf(stderr, "barpoke: unknown operation %s\n", op);
    return 2;
  }
  return 0;
}
