/* The init of the 32-bit guest test (tests/tests/i386.rs): a static i386 program without libc,
 * since a 32-bit kernel cannot run the 64-bit busybox initramfs. Built by
 * resources/build-init32.sh with the host's gcc (-m32 -nostdlib: no multilib needed).
 *
 * It prints a line per check to the console (fd 1: the kernel opened /dev/console for it):
 *   I386-INIT-OK                     first thing in user space
 *   I386-UNAME=<sysname> <release> <machine>
 *   I386-CPUS-ONLINE=<list>          /sys/devices/system/cpu/online
 *   I386-MEMTOTAL=<line>             /proc/meminfo's MemTotal
 *   I386-CMDLINE=<command line>      /proc/cmdline
 *   I386-RNG=<rng_current>           the hw_random device: virtio_rng.0 with microvm --rng,
 *                                    else none
 *   I386-HWRNG=<32 hex digits>       with virtio-rng: 16 bytes read from /dev/hwrng (devtmpfs),
 *                                    through the virtio-mmio device at 0xd0000000
 *   I386-INIT-DONE poweroff          then reboot(2) with LINUX_REBOOT_CMD_POWER_OFF, or, with
 *   I386-INIT-DONE reboot            i386.exit=reboot on the command line (a kernel without
 *                                    ACPI cannot power off), LINUX_REBOOT_CMD_RESTART
 * A failed step prints I386-ERROR=<what> <errno> and the init still powers off: the host
 * checks every line. */

#define SYS_exit 1
#define SYS_read 3
#define SYS_write 4
#define SYS_open 5
#define SYS_close 6
#define SYS_mount 21
#define SYS_reboot 88
#define SYS_uname 122

#define LINUX_REBOOT_MAGIC1 0xfee1deadu
#define LINUX_REBOOT_MAGIC2 672274793u
#define LINUX_REBOOT_CMD_POWER_OFF 0x4321fedcu
#define LINUX_REBOOT_CMD_RESTART 0x01234567u

static long sys3(long nr, long a, long b, long c)
{
	long ret;
	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
	return ret;
}

static long sys5(long nr, long a, long b, long c, long d, long e)
{
	long ret;
	__asm__ volatile("int $0x80"
			 : "=a"(ret)
			 : "a"(nr), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
			 : "memory");
	return ret;
}

/* gcc may call these for copies and clears even in freestanding code. */
void *memset(void *s, int c, unsigned long n)
{
	unsigned char *p = s;
	while (n--)
		*p++ = (unsigned char)c;
	return s;
}

void *memcpy(void *d, const void *s, unsigned long n)
{
	unsigned char *dp = d;
	const unsigned char *sp = s;
	while (n--)
		*dp++ = *sp++;
	return d;
}

static unsigned long len(const char *s)
{
	unsigned long n = 0;
	while (s[n])
		n++;
	return n;
}

static void put(const char *s)
{
	sys3(SYS_write, 1, (long)s, (long)len(s));
}

static void put_num(long v)
{
	char buf[16];
	int i = sizeof(buf) - 1;
	int neg = v < 0;
	buf[i] = 0;
	if (neg)
		v = -v;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v && i > 1);
	if (neg)
		buf[--i] = '-';
	put(buf + i);
}

static void error(const char *what, long ret)
{
	put("I386-ERROR=");
	put(what);
	put(" ");
	put_num(ret);
	put("\n");
}

/* Reads a small file into buf (NUL-terminated, first line only when `line` is set). */
static long slurp(const char *path, char *buf, long size, int line)
{
	long fd = sys3(SYS_open, (long)path, 0 /* O_RDONLY */, 0);
	long n;
	if (fd < 0)
		return fd;
	n = sys3(SYS_read, fd, (long)buf, size - 1);
	sys3(SYS_close, fd, 0, 0);
	if (n < 0)
		return n;
	buf[n] = 0;
	for (long i = 0; i < n; i++)
		if (buf[i] == '\n' && (line || i == n - 1)) {
			buf[i] = 0;
			break;
		}
	return n;
}

static void show(const char *key, const char *path, const char *prefix)
{
	static char buf[4096];
	long n = slurp(path, buf, sizeof(buf), 0);
	char *p = buf;
	if (n < 0) {
		error(path, n);
		return;
	}
	if (prefix) {
		/* the line starting with prefix */
		unsigned long k = len(prefix);
		for (;;) {
			unsigned long i = 0;
			while (i < k && p[i] == prefix[i])
				i++;
			if (i == k)
				break;
			while (*p && *p != '\n')
				p++;
			if (!*p) {
				error(prefix, 0);
				return;
			}
			p++;
		}
		for (char *q = p; *q; q++)
			if (*q == '\n') {
				*q = 0;
				break;
			}
	}
	put(key);
	put(p);
	put("\n");
}

static void rng(void)
{
	static char cur[64];
	static unsigned char bytes[16];
	static const char hex[] = "0123456789abcdef";
	char out[2 * sizeof(bytes) + 1];
	long fd, n = slurp("/sys/devices/virtual/misc/hw_random/rng_current", cur, sizeof(cur), 1);
	if (n < 0) {
		error("rng_current", n);
		return;
	}
	put("I386-RNG=");
	put(cur);
	put("\n");
	if (cur[0] != 'v')
		return; /* no virtio-rng: nothing to read */
	n = sys5(SYS_mount, (long)"devtmpfs", (long)"/dev", (long)"devtmpfs", 0, 0);
	if (n < 0) {
		error("mount /dev", n);
		return;
	}
	fd = sys3(SYS_open, (long)"/dev/hwrng", 0, 0);
	if (fd < 0) {
		error("open /dev/hwrng", fd);
		return;
	}
	n = sys3(SYS_read, fd, (long)bytes, sizeof(bytes));
	sys3(SYS_close, fd, 0, 0);
	if (n != (long)sizeof(bytes)) {
		error("read /dev/hwrng", n);
		return;
	}
	for (unsigned long i = 0; i < sizeof(bytes); i++) {
		out[2 * i] = hex[bytes[i] >> 4];
		out[2 * i + 1] = hex[bytes[i] & 15];
	}
	out[2 * sizeof(bytes)] = 0;
	put("I386-HWRNG=");
	put(out);
	put("\n");
}

static int contains(const char *hay, const char *needle)
{
	unsigned long k = len(needle);
	for (; *hay; hay++) {
		unsigned long i = 0;
		while (i < k && hay[i] == needle[i])
			i++;
		if (i == k)
			return 1;
	}
	return 0;
}

struct utsname {
	char sysname[65], nodename[65], release[65], version[65], machine[65], domainname[65];
};

void _start(void)
{
	static struct utsname u;
	long r;

	put("I386-INIT-OK\n");
	r = sys3(SYS_uname, (long)&u, 0, 0);
	if (r < 0) {
		error("uname", r);
	} else {
		put("I386-UNAME=");
		put(u.sysname);
		put(" ");
		put(u.release);
		put(" ");
		put(u.machine);
		put("\n");
	}
	r = sys5(SYS_mount, (long)"proc", (long)"/proc", (long)"proc", 0, 0);
	if (r < 0)
		error("mount /proc", r);
	r = sys5(SYS_mount, (long)"sysfs", (long)"/sys", (long)"sysfs", 0, 0);
	if (r < 0)
		error("mount /sys", r);
	show("I386-CPUS-ONLINE=", "/sys/devices/system/cpu/online", 0);
	show("I386-MEMTOTAL=", "/proc/meminfo", "MemTotal:");
	show("I386-CMDLINE=", "/proc/cmdline", 0);
	rng();
	static char cmdline[4096];
	int reboot = slurp("/proc/cmdline", cmdline, sizeof(cmdline), 1) > 0 &&
		     contains(cmdline, "i386.exit=reboot");
	put(reboot ? "I386-INIT-DONE reboot\n" : "I386-INIT-DONE poweroff\n");
	r = sys5(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
		 reboot ? LINUX_REBOOT_CMD_RESTART : LINUX_REBOOT_CMD_POWER_OFF, 0, 0);
	error("reboot", r);
	sys3(SYS_exit, 1, 0, 0);
	for (;;)
		;
}
