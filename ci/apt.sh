# Sourced by the ci scripts: `apt_get` is apt-get run one at a time. ci/test.sh runs the Kubernetes build beside the
# rest of the setup, and on a new machine both install packages: without this the second one fails at once on dpkg's
# lock ("Could not get lock /var/lib/dpkg/lock-frontend"). apt's own lock timeout covers other apt users (unattended
# upgrades).
apt_get() {
  flock -w 1800 /var/lock/jupyter-launch-apt.lock apt-get -o DPkg::Lock::Timeout=600 "$@"
}
