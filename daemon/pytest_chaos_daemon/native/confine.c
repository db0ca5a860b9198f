/*
 * pytest-chaos-confine: run one program inside a target's namespaces with no
 * more privilege than the target has.
 *
 * The daemon builds every argument and opens every file descriptor this
 * program uses; it is not meant to be run by hand. In one process, before any
 * byte of the target's filesystem is executed, it:
 *
 *   1. joins the daemon's tracking cgroup (--track-fd, a directory fd) and the
 *      target's cgroups (--cgroup-fd, open cgroup.procs files);
 *   2. drops the daemon's supplementary groups while still in the host's user
 *      namespace (a user namespace may refuse setgroups later);
 *   3. enters the target's namespaces (--ns-fd, user first, mount last) and
 *      its root directory (--root-fd);
 *   4. forks, so the program is inside the target's pid namespace; the child
 *      limits its bounding set, clears ambient capabilities, takes the target's
 *      gids and uid (--gid, --groups, --uid, as seen in the target's user
 *      namespace), cuts its capabilities to the target's (--cap-*), sets
 *      no_new_privs and a parent-death signal, closes every inherited fd but
 *      stdio, and execs the program, found in the target's filesystem;
 *   5. the parent waits for it, then kills whatever else is left in the
 *      tracking cgroup (a background child, a double fork, a setsid), and
 *      exits with the program's status (128+N for signal N). Told to stop
 *      (SIGTERM, or the daemon's death), it stops the program the same way,
 *      giving it a second to end its own children first.
 *
 * Exit status 125 means this program failed before exec (the reason is on
 * stderr, prefixed "confine:"); 126 and 127 mean the program could not be
 * executed or found, as a shell reports them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/capability.h>

#define EXIT_HELPER 125
#define EXIT_CANNOT_EXEC 126
#define EXIT_NOT_FOUND 127
#define MAX_FDS 16
#define MAX_GROUPS 256
#define MAX_SWEEPS 200
#define STOP_GRACE_MS 1000

/* Namespaces in the order they are entered: the user namespace first, so the
 * others (owned by it) may be joined; the mount namespace last, since after it
 * no path of the daemon's filesystem is reachable. */
static const char *const NS_ORDER[] = {"user", "cgroup", "ipc", "uts", "net", "pid", "mnt"};
#define NS_COUNT (sizeof(NS_ORDER) / sizeof(NS_ORDER[0]))

struct options {
    int track_fd;
    int cgroup_fds[MAX_FDS];
    int n_cgroup_fds;
    int ns_fds[NS_COUNT];
    int root_fd;
    uid_t uid;
    gid_t gid;
    gid_t groups[MAX_GROUPS];
    int n_groups;
    uint64_t cap_bnd, cap_eff, cap_inh;
    int have_ids;
    char **program;
};

static volatile sig_atomic_t terminate_requested;

static void die(const char *fmt, ...) {
    va_list ap;
    fputs("confine: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    _exit(EXIT_HELPER);
}

static long parse_number(const char *text, int base, const char *what) {
    char *end;
    errno = 0;
    long long value = strtoll(text, &end, base);
    if (errno || end == text || *end || value < 0)
        die("bad %s: %s", what, text);
    return (long)value;
}

static uint64_t parse_mask(const char *text, const char *what) {
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 16);
    if (errno || end == text || *end)
        die("bad %s: %s", what, text);
    return value;
}

static void parse_groups(struct options *o, const char *text) {
    const char *p = text;
    while (*p) {
        char *end;
        errno = 0;
        unsigned long value = strtoul(p, &end, 10);
        if (errno || end == p || (*end && *end != ','))
            die("bad --groups: %s", text);
        if (o->n_groups == MAX_GROUPS)
            die("more than %d groups", MAX_GROUPS);
        o->groups[o->n_groups++] = (gid_t)value;
        p = *end ? end + 1 : end;
    }
}

static void parse_args(int argc, char **argv, struct options *o) {
    memset(o, 0, sizeof(*o));
    o->track_fd = o->root_fd = -1;
    for (size_t i = 0; i < NS_COUNT; i++)
        o->ns_fds[i] = -1;
    int i = 1;
    for (; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--") == 0) {
            i++;
            break;
        }
        if (i + 1 >= argc)
            die("%s needs a value", arg);
        const char *value = argv[++i];
        if (strcmp(arg, "--track-fd") == 0) {
            o->track_fd = (int)parse_number(value, 10, arg);
        } else if (strcmp(arg, "--cgroup-fd") == 0) {
            if (o->n_cgroup_fds == MAX_FDS)
                die("more than %d --cgroup-fd", MAX_FDS);
            o->cgroup_fds[o->n_cgroup_fds++] = (int)parse_number(value, 10, arg);
        } else if (strcmp(arg, "--ns-fd") == 0) {
            const char *colon = strchr(value, ':');
            size_t k = 0;
            for (; colon && k < NS_COUNT; k++)
                if (strlen(NS_ORDER[k]) == (size_t)(colon - value) &&
                    strncmp(value, NS_ORDER[k], colon - value) == 0)
                    break;
            if (!colon || k == NS_COUNT)
                die("bad --ns-fd (TYPE:FD): %s", value);
            o->ns_fds[k] = (int)parse_number(colon + 1, 10, arg);
        } else if (strcmp(arg, "--root-fd") == 0) {
            o->root_fd = (int)parse_number(value, 10, arg);
        } else if (strcmp(arg, "--uid") == 0) {
            o->uid = (uid_t)parse_number(value, 10, arg);
            o->have_ids |= 1;
        } else if (strcmp(arg, "--gid") == 0) {
            o->gid = (gid_t)parse_number(value, 10, arg);
            o->have_ids |= 2;
        } else if (strcmp(arg, "--groups") == 0) {
            parse_groups(o, value);
        } else if (strcmp(arg, "--cap-bnd") == 0) {
            o->cap_bnd = parse_mask(value, arg);
        } else if (strcmp(arg, "--cap-eff") == 0) {
            o->cap_eff = parse_mask(value, arg);
        } else if (strcmp(arg, "--cap-inh") == 0) {
            o->cap_inh = parse_mask(value, arg);
        } else {
            die("unknown option %s", arg);
        }
    }
    if (o->have_ids != 3)
        die("--uid and --gid are required");
    if (i >= argc)
        die("no program given after --");
    o->program = &argv[i];
}

static void write_self(int fd, const char *what) {
    if (write(fd, "0", 1) != 1)
        die("cannot join %s: %s", what, strerror(errno));
}

static void join_cgroups(const struct options *o) {
    if (o->track_fd >= 0) {
        int procs = openat(o->track_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
        if (procs < 0)
            die("cannot open the tracking cgroup: %s", strerror(errno));
        write_self(procs, "the tracking cgroup");
        close(procs);
    }
    for (int i = 0; i < o->n_cgroup_fds; i++)
        write_self(o->cgroup_fds[i], "a cgroup of the target");
}

static void enter_namespaces(const struct options *o) {
    for (size_t k = 0; k < NS_COUNT; k++) {
        if (o->ns_fds[k] >= 0 && setns(o->ns_fds[k], 0) != 0)
            die("cannot enter the target's %s namespace: %s", NS_ORDER[k], strerror(errno));
    }
    if (o->root_fd >= 0) {
        if (fchdir(o->root_fd) != 0 || chroot(".") != 0)
            die("cannot enter the target's root directory: %s", strerror(errno));
    }
    if (chdir("/") != 0)
        die("cannot chdir to /: %s", strerror(errno));
}

static void limit_capabilities(const struct options *o) {
    for (int cap = 0; cap < 64; cap++) {
        int in_set = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
        if (in_set < 0)
            break; /* past the kernel's last capability */
        if (in_set && !(o->cap_bnd & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0)
            die("cannot drop capability %d from the bounding set: %s", cap, strerror(errno));
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        die("cannot clear ambient capabilities: %s", strerror(errno));
}

static void take_credentials(const struct options *o) {
    /* A user namespace made by an unprivileged user denies setgroups: the
     * groups stay empty then, which is less than the target has, never more. */
    if (o->n_groups > 0 && setgroups(o->n_groups, o->groups) != 0 && errno != EPERM)
        die("cannot set the target's groups: %s", strerror(errno));
    if (setresgid(o->gid, o->gid, o->gid) != 0)
        die("cannot take gid %u: %s", (unsigned)o->gid, strerror(errno));
    if (setresuid(o->uid, o->uid, o->uid) != 0)
        die("cannot take uid %u: %s", (unsigned)o->uid, strerror(errno));

    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct have[2], want[2];
    if (syscall(SYS_capget, &header, have) != 0)
        die("capget: %s", strerror(errno));
    uint64_t permitted = ((uint64_t)have[1].permitted << 32) | have[0].permitted;
    /* What survives exec: for uid 0, exec grants the bounding set, which
     * no_new_privs then cuts to the permitted set set here. */
    uint64_t eff = o->cap_eff & o->cap_bnd & permitted;
    uint64_t inh = o->cap_inh & eff;
    for (int w = 0; w < 2; w++) {
        want[w].effective = want[w].permitted = (uint32_t)(eff >> (32 * w));
        want[w].inheritable = (uint32_t)(inh >> (32 * w));
    }
    if (syscall(SYS_capset, &header, want) != 0)
        die("cannot limit capabilities to the target's: %s", strerror(errno));
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        die("cannot set no_new_privs: %s", strerror(errno));
}

static void close_inherited_fds(void) {
    if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0)
        return;
    for (int fd = 3; fd < 65536; fd++)
        close(fd);
}

static void run_program(const struct options *o, pid_t parent) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        die("cannot set a parent-death signal: %s", strerror(errno));
    /* A parent outside the target's pid namespace shows as 0; one that died
     * already leaves this process to the namespace's init. */
    pid_t seen = getppid();
    if (seen != parent && seen != 0)
        die("the helper's parent exited");
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGTERM, SIG_DFL);
    limit_capabilities(o);
    take_credentials(o);
    close_inherited_fds();
    execvp(o->program[0], o->program);
    int err = errno;
    fprintf(stderr, "confine: cannot execute %s: %s\n", o->program[0], strerror(err));
    _exit(err == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_EXEC);
}

/* Kill every process of the tracking cgroup but this one. The cgroup cannot be
 * left by the target's programs: it lives in a hierarchy mounted only in the
 * daemon's mount namespace. */
static void sweep_tracking_cgroup(int track_fd) {
    if (track_fd < 0)
        return;
    pid_t self = getpid();
    for (int round = 0; round < MAX_SWEEPS; round++) {
        int fd = openat(track_fd, "cgroup.procs", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return;
        char buf[8192];
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
            return;
        buf[n] = '\0';
        int others = 0;
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
            pid_t pid = (pid_t)atoi(line);
            if (pid > 0 && pid != self) {
                kill(pid, SIGKILL);
                others++;
            }
        }
        if (!others)
            return;
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        usleep(1000);
    }
}

/* SIGTERM first, so a program that starts workers (stress-ng) reaps them
 * rather than leaving them to the target's init; SIGKILL after a grace. */
static void stop_child(pid_t child) {
    kill(child, SIGTERM);
    for (int waited_ms = 0; waited_ms < STOP_GRACE_MS; waited_ms += 10) {
        if (waitpid(child, NULL, WNOHANG) == child)
            return;
        usleep(10 * 1000);
    }
    kill(child, SIGKILL);
}

static void on_terminate(int signum) {
    (void)signum;
    terminate_requested = 1;
}

int main(int argc, char **argv) {
    struct options o;
    parse_args(argc, argv, &o);

    /* SIGTERM reaches this process when the daemon dies (parent-death signal)
     * or stops it: either way, nothing it started may stay. */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_terminate;
    sigaction(SIGTERM, &sa, NULL);
    pid_t daemon = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) != 0)
        die("cannot set a parent-death signal: %s", strerror(errno));
    if (getppid() != daemon)
        die("the daemon exited");

    /* Opened here, from the daemon's filesystem: nothing of the target's is
     * opened by a process that keeps the daemon's privileges. */
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0)
        die("cannot open /dev/null: %s", strerror(errno));

    join_cgroups(&o);
    if (setgroups(0, NULL) != 0)
        die("cannot drop supplementary groups: %s", strerror(errno));
    enter_namespaces(&o);

    pid_t self = getpid();
    pid_t child = fork();
    if (child < 0)
        die("fork: %s", strerror(errno));
    if (child == 0)
        run_program(&o, self);

    /* Stdio belongs to the program now: the daemon reads it to EOF. */
    for (int fd = 0; fd < 3; fd++)
        dup2(devnull, fd);

    int status = 0;
    for (;;) {
        if (terminate_requested) {
            stop_child(child);
            sweep_tracking_cgroup(o.track_fd);
            _exit(128 + SIGTERM);
        }
        pid_t done = waitpid(child, &status, 0);
        if (done == child)
            break;
        if (done < 0 && errno != EINTR)
            die("waitpid: %s", strerror(errno));
    }
    sweep_tracking_cgroup(o.track_fd);
    if (WIFSIGNALED(status))
        _exit(128 + WTERMSIG(status));
    _exit(WEXITSTATUS(status));
}
