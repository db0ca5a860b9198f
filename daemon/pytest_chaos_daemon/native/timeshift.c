/*
 * pytest-chaos-timeshift: shifts the clocks one process reads through its vDSO, and puts them back.
 *
 *   pytest-chaos-timeshift apply   PID VDSO PAGE SEC NSEC MASK ADDR:ORIGINAL ADDR:ORIGINAL
 *   pytest-chaos-timeshift recover PID VDSO PAGE ADDR:ORIGINAL ADDR:ORIGINAL
 *
 * PID is a host pid; VDSO the start of its [vdso] mapping; PAGE the address where the
 * replacement functions go (free when the daemon planned it); SEC and NSEC the offset
 * (0 <= NSEC < 1e9); MASK the clock ids shifted (bit n: clock id n); each ADDR:ORIGINAL
 * a vDSO function entry (clock_gettime, then gettimeofday) and the hex of the bytes the
 * jump replaces there. The daemon found all of it in the target's /proc and journaled
 * it before running this: nothing here decides what to write where, it only checks.
 *
 * apply stops every thread (PTRACE_SEIZE + PTRACE_INTERRUPT), checks the entries still
 * hold ORIGINAL, maps PAGE in the target (an mmap syscall the main thread makes at a
 * syscall instruction of the vDSO), writes the replacement functions and the offset
 * there, and writes at each entry a jump to its replacement. The replacements make the
 * real system call and add the offset for the clocks in MASK.
 * recover writes ORIGINAL back where the jump is; PAGE stays mapped, unreferenced (a
 * thread may still be returning through it), until the process exits or execs.
 * Both refuse to write while a thread is stopped inside the bytes being replaced (it is
 * let go and tried again), and both give up when the process runs another program
 * (its vDSO is no longer at VDSO).
 *
 * Exit status: 0 done (stdout says what: "applied", "restored N", "unchanged");
 * 3 the process is gone; 4 the process exec'd (its vDSO moved); 5 the process is not as
 * planned (stderr says how); 1 anything else. x86_64 only.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if !defined(__x86_64__)
#error "pytest-chaos-timeshift patches x86_64 vDSOs only"
#endif

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

enum { EXIT_OTHER = 1, EXIT_GONE = 3, EXIT_EXECED = 4, EXIT_NOT_AS_PLANNED = 5 };
enum { PAGE_SIZE_ = 4096, PATCH_LEN = 12, SITES = 2, MAX_THREADS = 8192, RETRIES = 100, TIMEOUT_S = 20 };

/*
 * The replacement functions, copied to PAGE. Four data words first (written per fault):
 * seconds, nanoseconds and microseconds of the offset, and the clock mask. Position
 * independent (RIP-relative data), no stack, only registers the C ABI lets a callee
 * clobber; they return what the system call returned, as the vDSO's own fallback does.
 */
__asm__(
    ".pushsection .rodata.timeshift,\"a\"\n"
    ".balign 16\n"
    ".globl ts_blob\n"
    "ts_blob:\n"
    "ts_sec: .quad 0\n"
    "ts_nsec: .quad 0\n"
    "ts_usec: .quad 0\n"
    "ts_mask: .quad 0\n"
    ".globl ts_clock_gettime\n"
    "ts_clock_gettime:\n"          /* int (clockid_t id = edi, struct timespec *ts = rsi) */
    "  mov $228, %eax\n"           /* __NR_clock_gettime; syscall keeps rdi and rsi */
    "  syscall\n"
    "  test %rax, %rax\n"
    "  jnz 1f\n"
    "  mov %edi, %edx\n"           /* negative ids (CPU-time clocks of a pid) are >= 64 here */
    "  cmp $64, %edx\n"
    "  jae 1f\n"
    "  mov ts_mask(%rip), %rcx\n"
    "  bt %rdx, %rcx\n"
    "  jnc 1f\n"
    "  test %rsi, %rsi\n"
    "  jz 1f\n"
    "  mov (%rsi), %rcx\n"
    "  add ts_sec(%rip), %rcx\n"
    "  mov 8(%rsi), %rdx\n"
    "  add ts_nsec(%rip), %rdx\n"
    "  cmp $1000000000, %rdx\n"
    "  jl 2f\n"
    "  sub $1000000000, %rdx\n"
    "  inc %rcx\n"
    "2:\n"
    "  mov %rcx, (%rsi)\n"
    "  mov %rdx, 8(%rsi)\n"
    "1:\n"
    "  ret\n"
    ".globl ts_gettimeofday\n"
    "ts_gettimeofday:\n"           /* int (struct timeval *tv = rdi, struct timezone *tz = rsi) */
    "  mov $96, %eax\n"            /* __NR_gettimeofday */
    "  syscall\n"
    "  test %rax, %rax\n"
    "  jnz 1f\n"
    "  test %rdi, %rdi\n"
    "  jz 1f\n"
    "  testb $1, ts_mask(%rip)\n"  /* gettimeofday reads CLOCK_REALTIME */
    "  jz 1f\n"
    "  mov (%rdi), %rcx\n"
    "  add ts_sec(%rip), %rcx\n"
    "  mov 8(%rdi), %rdx\n"
    "  add ts_usec(%rip), %rdx\n"
    "  cmp $1000000, %rdx\n"
    "  jl 2f\n"
    "  sub $1000000, %rdx\n"
    "  inc %rcx\n"
    "2:\n"
    "  mov %rcx, (%rdi)\n"
    "  mov %rdx, 8(%rdi)\n"
    "1:\n"
    "  ret\n"
    ".globl ts_blob_end\n"
    "ts_blob_end:\n"
    ".popsection\n");

extern const unsigned char ts_blob[], ts_blob_end[], ts_clock_gettime[], ts_gettimeofday[];

struct thread {
    pid_t tid;
    int signal;  /* a signal it stopped with at attach: given back when it is let go */
    int resumed; /* it ran after that stop (the syscall thread): the signal is raised again instead */
};

static pid_t pid;
static int mem_fd = -1;
static struct thread threads[MAX_THREADS];
static int nthreads;

static void fail(int status, const char *format, ...) __attribute__((noreturn, format(printf, 2, 3)));

static void detach_all(void) {
    for (int i = 0; i < nthreads; i++) {
        struct thread *t = &threads[i];
        if (t->signal && t->resumed) {
            syscall(SYS_tgkill, pid, t->tid, t->signal);
            t->signal = 0;
        }
        if (t->tid > 0)
            ptrace(PTRACE_DETACH, t->tid, 0, (void *)(long)t->signal);
    }
    nthreads = 0;
}

static void fail(int status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    fputs("timeshift: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    detach_all();
    exit(status);
}

static int process_alive(void) {
    return kill(pid, 0) == 0 || errno != ESRCH;
}

static int attached(pid_t tid) {
    for (int i = 0; i < nthreads; i++)
        if (threads[i].tid == tid)
            return 1;
    return 0;
}

/* Seize and stop every thread, until a listing of /proc/PID/task finds none new (threads started meanwhile). */
static void attach_all(void) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    for (int found = 1; found;) {
        found = 0;
        DIR *dir = opendir(path);
        if (dir == NULL) {
            if (errno == ENOENT)
                fail(EXIT_GONE, "process %d is gone", pid);
            fail(EXIT_OTHER, "cannot list %s: %s", path, strerror(errno));
        }
        struct dirent *entry;
        while ((entry = readdir(dir)) != NULL) {
            pid_t tid = (pid_t)atoi(entry->d_name);
            if (tid <= 0 || attached(tid))
                continue;
            if (nthreads == MAX_THREADS) {
                closedir(dir);
                fail(EXIT_NOT_AS_PLANNED, "process %d has more than %d threads", pid, MAX_THREADS);
            }
            if (ptrace(PTRACE_SEIZE, tid, 0, 0) != 0) {
                if (errno == ESRCH)
                    continue; /* the thread ended */
                int err = errno;
                closedir(dir);
                fail(err == EPERM ? EXIT_NOT_AS_PLANNED : EXIT_OTHER,
                     "cannot trace thread %d of process %d: %s (another tracer, or no CAP_SYS_PTRACE)", tid, pid,
                     strerror(err));
            }
            struct thread *t = &threads[nthreads++];
            t->tid = tid, t->signal = 0, t->resumed = 0;
            found = 1;
            if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) != 0 && errno != ESRCH) {
                closedir(dir);
                fail(EXIT_OTHER, "cannot stop thread %d: %s", tid, strerror(errno));
            }
            int status;
            if (waitpid(tid, &status, __WALL) < 0 || WIFEXITED(status) || WIFSIGNALED(status)) {
                t->tid = -1; /* ended while stopping it */
                continue;
            }
            /* A signal-delivery stop: the signal is the target's own, and is given back on detach. */
            if (WIFSTOPPED(status) && (status >> 16) == 0 && WSTOPSIG(status) != SIGTRAP)
                t->signal = WSTOPSIG(status);
        }
        closedir(dir);
    }
    int live = 0;
    for (int i = 0; i < nthreads; i++)
        live += threads[i].tid > 0;
    if (!live)
        fail(EXIT_GONE, "process %d is gone", pid);
}

static uint64_t vdso_start(uint64_t *end) {
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/maps", pid);
    FILE *maps = fopen(path, "re");
    if (maps == NULL)
        fail(process_alive() ? EXIT_OTHER : EXIT_GONE, "cannot read %s: %s", path, strerror(errno));
    uint64_t start = 0;
    while (fgets(line, sizeof line, maps) != NULL) {
        size_t length = strlen(line);
        if (length > 7 && strcmp(line + length - 7, "[vdso]\n") == 0) {
            sscanf(line, "%" SCNx64 "-%" SCNx64, &start, end);
            break;
        }
    }
    fclose(maps);
    return start;
}

static void read_at(uint64_t address, void *buf, size_t length) {
    if (pread(mem_fd, buf, length, (off_t)address) != (ssize_t)length)
        fail(EXIT_OTHER, "cannot read %zu bytes at %#" PRIx64 " in process %d: %s", length, address, pid,
             strerror(errno));
}

static void write_at(uint64_t address, const void *buf, size_t length) {
    /* /proc/PID/mem writes as a debugger does: into read-only text too, the page copied for this process only. */
    if (pwrite(mem_fd, buf, length, (off_t)address) != (ssize_t)length)
        fail(EXIT_OTHER, "cannot write %zu bytes at %#" PRIx64 " in process %d: %s", length, address, pid,
             strerror(errno));
}

struct site {
    uint64_t address;
    unsigned char original[PATCH_LEN];
    unsigned char jump[PATCH_LEN];
};

static uint64_t parse_u64(const char *text, int base, const char *what) {
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, base);
    if (errno || end == text || *end)
        fail(EXIT_OTHER, "bad %s: %s", what, text);
    return value;
}

static void parse_site(const char *text, struct site *site, uint64_t page, size_t target_offset) {
    const char *colon = strchr(text, ':');
    if (colon == NULL || strlen(colon + 1) != 2 * PATCH_LEN)
        fail(EXIT_OTHER, "bad site %s: ADDR:HEX of %d bytes", text, PATCH_LEN);
    char address[32];
    size_t n = (size_t)(colon - text);
    if (n == 0 || n >= sizeof address)
        fail(EXIT_OTHER, "bad site address in %s", text);
    memcpy(address, text, n);
    address[n] = 0;
    site->address = parse_u64(address, 16, "site address");
    for (int i = 0; i < PATCH_LEN; i++) {
        char byte[3] = {colon[1 + 2 * i], colon[2 + 2 * i], 0};
        site->original[i] = (unsigned char)parse_u64(byte, 16, "original bytes");
    }
    /* movabs $replacement, %rax; jmp *%rax: rax is free at a function's entry. */
    uint64_t to = page + target_offset;
    site->jump[0] = 0x48, site->jump[1] = 0xb8;
    memcpy(site->jump + 2, &to, 8);
    site->jump[10] = 0xff, site->jump[11] = 0xe0;
}

/* Whether a stopped thread is inside the bytes about to change (past their first): it would resume mid-instruction. */
static int thread_in_sites(const struct site *sites) {
    for (int i = 0; i < nthreads; i++) {
        struct user_regs_struct regs;
        if (threads[i].tid <= 0 || ptrace(PTRACE_GETREGS, threads[i].tid, 0, &regs) != 0)
            continue;
        for (int s = 0; s < SITES; s++)
            if (regs.rip > sites[s].address && regs.rip < sites[s].address + PATCH_LEN)
                return 1;
    }
    return 0;
}

/* Attach, check the vDSO is where it was planned, and wait until no thread is inside a site. */
static void stop_process(uint64_t vdso, const struct site *sites, uint64_t *vdso_end) {
    for (int attempt = 0;; attempt++) {
        attach_all();
        uint64_t start = vdso_start(vdso_end);
        if (start != vdso)
            fail(EXIT_EXECED, "process %d has its vDSO at %#" PRIx64 ", not %#" PRIx64 ": it runs another program now",
                 pid, start, vdso);
        if (!thread_in_sites(sites))
            return;
        if (attempt == RETRIES)
            fail(EXIT_NOT_AS_PLANNED, "a thread of process %d stayed inside a vDSO entry for %d attempts", pid,
                 RETRIES);
        detach_all();
        struct timespec pause = {0, 10 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}

static struct thread *main_thread(void) {
    for (int i = 0; i < nthreads; i++)
        if (threads[i].tid > 0)
            return &threads[i];
    fail(EXIT_GONE, "process %d is gone", pid);
}

/* Make the thread run one system call at `at` (a syscall instruction), its registers saved and restored around it. */
static long inject_syscall(struct thread *t, uint64_t at, long number, const long args[6]) {
    struct user_regs_struct saved, regs;
    if (ptrace(PTRACE_GETREGS, t->tid, 0, &saved) != 0)
        fail(EXIT_OTHER, "cannot read the registers of thread %d: %s", t->tid, strerror(errno));
    regs = saved;
    regs.rax = (uint64_t)number;
    regs.rdi = (uint64_t)args[0], regs.rsi = (uint64_t)args[1], regs.rdx = (uint64_t)args[2];
    regs.r10 = (uint64_t)args[3], regs.r8 = (uint64_t)args[4], regs.r9 = (uint64_t)args[5];
    regs.rip = at;
    regs.orig_rax = (uint64_t)-1; /* no restart of a system call it was stopped in: that comes with `saved` */
    if (ptrace(PTRACE_SETREGS, t->tid, 0, &regs) != 0)
        fail(EXIT_OTHER, "cannot set the registers of thread %d: %s", t->tid, strerror(errno));
    t->resumed = 1;
    for (int step = 0;; step++) {
        if (step == RETRIES)
            fail(EXIT_OTHER, "thread %d did not run the injected system call", t->tid);
        if (ptrace(PTRACE_SINGLESTEP, t->tid, 0, 0) != 0)
            fail(EXIT_OTHER, "cannot step thread %d: %s", t->tid, strerror(errno));
        int status;
        if (waitpid(t->tid, &status, __WALL) < 0 || WIFEXITED(status) || WIFSIGNALED(status))
            fail(EXIT_GONE, "process %d ended while mapping a page in it", pid);
        if ((status >> 16) == 0 && WSTOPSIG(status) != SIGTRAP && !t->signal)
            t->signal = WSTOPSIG(status); /* one of its own arrived meanwhile: raised again at detach */
        if (ptrace(PTRACE_GETREGS, t->tid, 0, &regs) != 0)
            fail(EXIT_OTHER, "cannot read the registers of thread %d: %s", t->tid, strerror(errno));
        if (regs.rip == at + 2)
            break;
    }
    if (ptrace(PTRACE_SETREGS, t->tid, 0, &saved) != 0)
        fail(EXIT_OTHER, "cannot restore the registers of thread %d: %s", t->tid, strerror(errno));
    return (long)regs.rax;
}

static void open_mem(void) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", pid);
    mem_fd = open(path, O_RDWR | O_CLOEXEC);
    if (mem_fd < 0)
        fail(process_alive() ? EXIT_OTHER : EXIT_GONE, "cannot open %s: %s", path, strerror(errno));
}

static int apply(uint64_t vdso, uint64_t page, int64_t sec, int64_t nsec, uint64_t mask, struct site *sites) {
    uint64_t vdso_end = 0;
    stop_process(vdso, sites, &vdso_end);
    open_mem();
    for (int s = 0; s < SITES; s++) {
        unsigned char now[PATCH_LEN];
        read_at(sites[s].address, now, PATCH_LEN);
        if (memcmp(now, sites[s].jump, PATCH_LEN) == 0)
            fail(EXIT_NOT_AS_PLANNED, "process %d already has its clock shifted at %#" PRIx64, pid, sites[s].address);
        if (memcmp(now, sites[s].original, PATCH_LEN) != 0)
            fail(EXIT_NOT_AS_PLANNED, "the vDSO entry at %#" PRIx64 " of process %d is not as planned (patched by "
                 "another tool?)", sites[s].address, pid);
    }
    /* A syscall instruction to run the mmap at: the vDSO's own fallbacks have them. */
    size_t size = (size_t)(vdso_end - vdso);
    unsigned char *image = malloc(size);
    if (image == NULL || size < 2)
        fail(EXIT_OTHER, "no memory for a vDSO of %zu bytes", size);
    read_at(vdso, image, size);
    uint64_t at = 0;
    for (size_t i = 0; i + 1 < size; i++)
        if (image[i] == 0x0f && image[i + 1] == 0x05) {
            at = vdso + i;
            break;
        }
    free(image);
    if (!at)
        fail(EXIT_NOT_AS_PLANNED, "the vDSO of process %d has no syscall instruction to map a page with", pid);
    long args[6] = {(long)page, PAGE_SIZE_, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                    -1, 0};
    long mapped = inject_syscall(main_thread(), at, SYS_mmap, args);
    if (mapped != (long)page) {
        if (mapped > 0 && mapped != (long)page) {
            long unmap[6] = {mapped, PAGE_SIZE_, 0, 0, 0, 0}; /* a kernel without MAP_FIXED_NOREPLACE took a hint */
            inject_syscall(main_thread(), at, SYS_munmap, unmap);
        }
        fail(EXIT_NOT_AS_PLANNED, "cannot map a page at %#" PRIx64 " in process %d (mmap returned %ld%s)", page, pid,
             mapped, mapped == -EEXIST ? ": something was mapped there since the plan" : "");
    }
    unsigned char code[PAGE_SIZE_];
    size_t length = (size_t)(ts_blob_end - ts_blob);
    memset(code, 0xcc, sizeof code);
    memcpy(code, ts_blob, length);
    int64_t data[4] = {sec, nsec, nsec / 1000, (int64_t)mask};
    memcpy(code, data, sizeof data);
    write_at(page, code, sizeof code);
    for (int s = 0; s < SITES; s++)
        write_at(sites[s].address, sites[s].jump, PATCH_LEN);
    for (int s = 0; s < SITES; s++) {
        unsigned char now[PATCH_LEN];
        read_at(sites[s].address, now, PATCH_LEN);
        if (memcmp(now, sites[s].jump, PATCH_LEN) != 0)
            fail(EXIT_OTHER, "the jump at %#" PRIx64 " of process %d did not stay written", sites[s].address, pid);
    }
    detach_all();
    puts("applied");
    return 0;
}

static int recover(uint64_t vdso, struct site *sites) {
    uint64_t vdso_end = 0;
    stop_process(vdso, sites, &vdso_end);
    open_mem();
    int restored = 0;
    for (int s = 0; s < SITES; s++) {
        unsigned char now[PATCH_LEN];
        read_at(sites[s].address, now, PATCH_LEN);
        if (memcmp(now, sites[s].original, PATCH_LEN) == 0)
            continue;
        if (memcmp(now, sites[s].jump, PATCH_LEN) != 0)
            fail(EXIT_NOT_AS_PLANNED, "the vDSO entry at %#" PRIx64 " of process %d holds neither the original nor "
                 "this fault's jump: left as it is", sites[s].address, pid);
        write_at(sites[s].address, sites[s].original, PATCH_LEN);
        read_at(sites[s].address, now, PATCH_LEN);
        if (memcmp(now, sites[s].original, PATCH_LEN) != 0)
            fail(EXIT_OTHER, "the original bytes at %#" PRIx64 " of process %d did not stay written",
                 sites[s].address, pid);
        restored++;
    }
    detach_all();
    if (restored)
        printf("restored %d\n", restored);
    else
        puts("unchanged");
    return 0;
}

static void on_alarm(int signum) {
    (void)signum;
    /* The kernel lets the threads go when their tracer exits. */
    static const char message[] = "timeshift: timed out (a frozen or stopped process cannot be interrupted)\n";
    ssize_t ignored = write(2, message, sizeof message - 1);
    (void)ignored;
    _exit(EXIT_NOT_AS_PLANNED);
}

int main(int argc, char **argv) {
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* dies with the daemon: the kernel then lets the threads go */
    signal(SIGALRM, on_alarm);
    alarm(TIMEOUT_S);
    size_t offsets[SITES] = {(size_t)(ts_clock_gettime - ts_blob), (size_t)(ts_gettimeofday - ts_blob)};
    struct site sites[SITES];
    if (argc == 10 && strcmp(argv[1], "apply") == 0) {
        pid = (pid_t)parse_u64(argv[2], 10, "pid");
        uint64_t vdso = parse_u64(argv[3], 16, "vdso"), page = parse_u64(argv[4], 16, "page");
        int64_t sec = strtoll(argv[5], NULL, 10);
        int64_t nsec = (int64_t)parse_u64(argv[6], 10, "nsec");
        uint64_t mask = parse_u64(argv[7], 16, "mask");
        if (nsec >= 1000000000 || page % PAGE_SIZE_)
            fail(EXIT_OTHER, "bad nsec or page");
        for (int s = 0; s < SITES; s++)
            parse_site(argv[8 + s], &sites[s], page, offsets[s]);
        return apply(vdso, page, sec, nsec, mask, sites);
    }
    if (argc == 7 && strcmp(argv[1], "recover") == 0) {
        pid = (pid_t)parse_u64(argv[2], 10, "pid");
        uint64_t vdso = parse_u64(argv[3], 16, "vdso"), page = parse_u64(argv[4], 16, "page");
        for (int s = 0; s < SITES; s++)
            parse_site(argv[5 + s], &sites[s], page, offsets[s]);
        return recover(vdso, sites);
    }
    fprintf(stderr, "usage: %s apply PID VDSO PAGE SEC NSEC MASK ADDR:HEX ADDR:HEX\n"
                    "       %s recover PID VDSO PAGE ADDR:HEX ADDR:HEX\n", argv[0], argv[0]);
    return EXIT_OTHER;
}
