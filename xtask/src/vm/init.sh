#!/bin/sh
# PID 1 of `cargo xtask vm` guests (static busybox): pseudo-filesystems, the modules of
# /etc/modules (dependency order), the host's / over virtio-9p at /mnt/host with the guest's
# /proc, /sys, /dev, bpffs, tracefs and fresh tmpfs /tmp, /run; then /ct-trace-vm.sh chrooted there.
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "ct-trace-vm: error: $*"; poweroff -f; sleep 10; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t bpf bpf /sys/fs/bpf || fail "cannot mount bpffs"
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
t0=$(cut -d' ' -f1 /proc/uptime)
n=0
for m in $(cat /etc/modules); do
  if insmod "/lib/modules/$m" 2>/tmp/insmod.err; then n=$((n+1))
  elif ! grep -q 'File exists' /tmp/insmod.err; then echo "ct-trace-vm: warning: insmod $m: $(cat /tmp/insmod.err)"; fi
done
echo "ct-trace-vm: $n modules loaded (uptime $t0 -> $(cut -d' ' -f1 /proc/uptime) s)"
ip link set lo up
R=/mnt/host
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose host $R ||
  fail "cannot mount the host's / (virtio-9p tag 'host')"
mount -t tmpfs tmpfs $R/tmp && mount -t tmpfs tmpfs $R/run || fail "cannot mount tmpfs on $R/tmp and $R/run"
# The workspace, shared on its own: a checkout under /tmp or /run would be hidden by the tmpfs.
if [ -s /ct-trace-vm.workdir ]; then
  W=$(cat /ct-trace-vm.workdir)
  mkdir -p "$R$W" 2>/dev/null
  mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose work "$R$W" ||
    fail "cannot mount the workspace $W (virtio-9p tag 'work')"
fi
[ -L $R/var/run ] || mount -t tmpfs tmpfs $R/var/run || fail "cannot mount tmpfs on $R/var/run"
for d in proc sys dev; do mount -o rbind /$d $R/$d || fail "cannot bind /$d into $R"; done
cp /ct-trace-vm.sh $R/tmp/.ct-trace-vm.sh || fail "no command in the initramfs"
echo "ct-trace-vm: running the command (kernel $(uname -r), uptime $(cut -d' ' -f1 /proc/uptime) s)"
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=linux \
  chroot $R /bin/sh /tmp/.ct-trace-vm.sh </dev/null
echo "CT_TRACE_VM_EXIT=$?"
poweroff -f
sleep 10
