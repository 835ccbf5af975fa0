/* distbuild-boot: the init of distbuild's bootable example systems.
 *
 * It shows on the console that a deployed system really booted: it prints
 * which system and version it is (IMAGE_ID and IMAGE_VERSION in
 * /etc/os-release, written at deploy time by version-label.configure) and,
 * on a distbuild node, the role and section it found in the distbuild.conf
 * that distbuild.configure wrote. Then it powers the machine off, so a test
 * (or a user) sees the guest stop by itself.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <unistd.h>

#define CONF "/etc/distbuild/distbuild.conf"

/* The value of KEY=VALUE in an os-release file, without quotes; "unknown" if absent. */
static void os_release(const char *key, char *out, size_t size)
{
	char line[512];
	size_t len = strlen(key);
	FILE *f = fopen("/etc/os-release", "r");

	snprintf(out, size, "unknown");
	if (!f)
		return;
	while (fgets(line, sizeof line, f)) {
		char *v = line + len + 1;
		if (strncmp(line, key, len) || line[len] != '=')
			continue;
		v[strcspn(v, "\n")] = 0;
		if (*v == '"' || *v == '\'') {
			v++;
			v[strcspn(v, "\"'")] = 0;
		}
		snprintf(out, size, "%s", v);
	}
	fclose(f);
}

/* Whether a YAML boolean value (as distbuild.configure writes them) is true. */
static int yes(const char *v)
{
	return !strncmp(v, "True", 4) || !strncmp(v, "true", 4) || !strncmp(v, "yes", 3);
}

/* Print the node's roles and the sections of distbuild.conf that name it. */
static void distbuild_conf(void)
{
	char line[512], section[64] = "", controller[8] = "no", worker[8] = "no";
	FILE *f = fopen(CONF, "r");

	if (!f) {
		printf("distbuild-boot: no " CONF ": not a distbuild node\n");
		return;
	}
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = 0;
		if (!strncmp(line, "DISTBUILD_CONTROLLER: ", 22))
			snprintf(controller, sizeof controller, "%s", yes(line + 22) ? "yes" : "no");
		else if (!strncmp(line, "DISTBUILD_WORKER: ", 18))
			snprintf(worker, sizeof worker, "%s", yes(line + 18) ? "yes" : "no");
		else if (!strcmp(line, "controller:") || !strcmp(line, "worker:"))
			snprintf(section, sizeof section, "%.*s", (int)strlen(line) - 1, line);
		else if (*section && !strncmp(line, "  name: ", 8)) {
			char *name = line + 8;
			size_t len = strlen(name);
			if (len >= 2 && (*name == '"' || *name == '\'') && name[len - 1] == *name) {
				name[len - 1] = 0;  /* a YAML-quoted name */
				name++;
			}
			printf("distbuild-boot: " CONF ": %s section for %s\n", section, name);
			*section = 0;
		} else if (*line && *line != ' ')
			*section = 0;
	}
	fclose(f);
	printf("distbuild-boot: role: controller %s, worker %s\n", controller, worker);
}

static void mount_fs(const char *source, const char *target, const char *type)
{
	mkdir(target, 0755);
	if (mount(source, target, type, 0, NULL) && errno != EBUSY)
		printf("distbuild-boot: cannot mount %s on %s: %s\n", type, target, strerror(errno));
}

int main(void)
{
	char id[128], version[128];

	mount_fs("proc", "/proc", "proc");
	mount_fs("devtmpfs", "/dev", "devtmpfs");  /* EBUSY where the kernel mounted it */
	os_release("IMAGE_ID", id, sizeof id);
	os_release("IMAGE_VERSION", version, sizeof version);
	printf("distbuild-boot: booted %s %s\n", id, version);
	distbuild_conf();
	printf("distbuild-boot: powering off\n");
	fflush(stdout);
	sync();
	reboot(RB_POWER_OFF);
	printf("distbuild-boot: power off failed: %s\n", strerror(errno));
	for (;;)
		pause();
}
