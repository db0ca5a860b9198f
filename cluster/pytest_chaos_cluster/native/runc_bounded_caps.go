// runc-bounded-caps: Docker Engine's runtime on machines whose capability
// bounding set lacks capabilities (CAP_SYS_RESOURCE, say). Docker 20.10 gives
// a --privileged container every capability the kernel knows, and runc then
// fails with "unable to apply caps: operation not permitted" (and so does a
// `docker exec` in it). Before runc creates a container or runs a process in
// one, this narrows the capability sets of the bundle's config.json or of the
// exec's process.json to this process's bounding set, the most anything could
// hold here; then it runs runc with the same arguments. Every other runc
// command passes through.
//
//	dockerd --add-runtime bounded-runc=/path/runc-bounded-caps --default-runtime bounded-runc
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Capability names in kernel bit order (linux/capability.h).
var capabilityNames = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
	"CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
	"CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
	"CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

const runcPath = "/usr/sbin/runc"

func main() {
	args := os.Args[1:]
	if file, inProcess, ok := specFile(args); ok {
		if err := narrow(file, inProcess); err != nil {
			fmt.Fprintf(os.Stderr, "runc-bounded-caps: %v\n", err)
			os.Exit(1)
		}
	}
	real := os.Getenv("RUNC_BOUNDED_CAPS_RUNC")
	if real == "" {
		real = runcPath
	}
	err := syscall.Exec(real, append([]string{"runc"}, args...), os.Environ())
	fmt.Fprintf(os.Stderr, "runc-bounded-caps: exec %s: %v\n", real, err)
	os.Exit(1)
}

// specFile finds the JSON a command starts a process from: the bundle's config.json for `create` and
// `run` (the bundle defaults to the current directory), the --process file for `exec`
// (inProcess: its capabilities are at the top level).
func specFile(args []string) (file string, inProcess bool, ok bool) {
	for i, arg := range args {
		if arg != "create" && arg != "run" && arg != "exec" {
			continue
		}
		rest := args[i+1:]
		if arg == "exec" {
			file := flagValue(rest, "--process", "-p")
			return file, true, file != ""
		}
		bundle := flagValue(rest, "--bundle", "-b")
		if bundle == "" {
			bundle = "."
		}
		return filepath.Join(bundle, "config.json"), false, true
	}
	return "", false, false
}

func flagValue(args []string, long, short string) string {
	for j, flag := range args {
		switch {
		case (flag == long || flag == short) && j+1 < len(args):
			return args[j+1]
		case strings.HasPrefix(flag, long+"="):
			return strings.TrimPrefix(flag, long+"=")
		}
	}
	return ""
}

func boundingSet() (map[string]bool, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			if err != nil {
				return nil, err
			}
			allowed := map[string]bool{}
			for bit, name := range capabilityNames {
				if mask&(1<<uint(bit)) != 0 {
					allowed[name] = true
				}
			}
			return allowed, nil
		}
	}
	return nil, fmt.Errorf("no CapBnd line in /proc/self/status")
}

func narrow(configPath string, inProcess bool) error {
	allowed, err := boundingSet()
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(configPath)
	if err != nil {
		return err
	}
	var spec map[string]any
	if err := json.Unmarshal(raw, &spec); err != nil {
		return fmt.Errorf("%s: %v", configPath, err)
	}
	process := spec
	if !inProcess {
		process, _ = spec["process"].(map[string]any)
	}
	caps, _ := process["capabilities"].(map[string]any)
	changed := false
	for set, value := range caps {
		names, _ := value.([]any)
		kept := make([]any, 0, len(names))
		for _, name := range names {
			if s, _ := name.(string); allowed[s] {
				kept = append(kept, name)
			}
		}
		if len(kept) != len(names) {
			caps[set] = kept
			changed = true
		}
	}
	if !changed {
		return nil
	}
	out, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	tmp := configPath + ".bounded"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, configPath)
}
