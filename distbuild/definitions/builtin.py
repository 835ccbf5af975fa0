"""Built-in defaults for definitions version 6, which has no DEFAULTS file.

They are what version 7's first DEFAULTS file held: autotools without the
bootstrap checks and without --sysconfdir/--localstatedir, and no
python3-distutils.
"""

from __future__ import annotations

from distbuild.definitions.model import BuildSystem, Defaults, SplitRule

_STRIP = (
    'find "$DESTDIR" -type f '
    "'(' -perm -111 -o -name '*.so*' -o -name '*.cmxs' -o -name '*.node' ')' "
    "-exec sh -ec "
    "'read -n4 hdr <\"$1\" # check for elf header\n"
    ' if [ "$hdr" != "$(printf \\\\x7fELF)" ]; then\n'
    "     exit 0\n"
    " fi\n"
    ' debugfile="$DESTDIR$PREFIX/lib/debug/$(basename "$1")"\n'
    ' mkdir -p "$(dirname "$debugfile")"\n'
    ' objcopy --only-keep-debug "$1" "$debugfile"\n'
    ' chmod 644 "$debugfile"\n'
    ' strip --remove-section=.comment --remove-section=.note --strip-unneeded "$1"\n'
    " objcopy --add-gnu-debuglink \"$debugfile\" \"$1\"' - {} ';'\n"
)


def _bs(name: str, configure=(), build=(), install=(), strip=(_STRIP,)) -> BuildSystem:
    return BuildSystem(name, {
        "configure-commands": tuple(configure),
        "build-commands": tuple(build),
        "install-commands": tuple(install),
        "strip-commands": tuple(strip),
    })


CHUNK_SPLIT_RULES = (
    SplitRule("-bins", (r"(usr/)?s?bin/.*",)),
    SplitRule("-libs", (r"(usr/)?lib(32|64)?/lib[^/]*\.so(\.\d+)*", r"(usr/)libexec/.*")),
    SplitRule("-devel", (
        r"(usr/)?include/.*", r"(usr/)?lib(32|64)?/lib.*\.a", r"(usr/)?lib(32|64)?/lib.*\.la",
        r"(usr/)?(lib(32|64)?|share)/pkgconfig/.*\.pc",
    )),
    SplitRule("-doc", (r"(usr/)?share/doc/.*", r"(usr/)?share/man/.*", r"(usr/)?share/info/.*")),
    SplitRule("-locale", (
        r"(usr/)?share/locale/.*", r"(usr/)?share/i18n/.*", r"(usr/)?share/zoneinfo/.*",
    )),
    SplitRule("-misc", (r".*",)),
)

STRATUM_SPLIT_RULES = (
    SplitRule("-devel", (r".*-devel", r".*-debug", r".*-doc")),
    SplitRule("-runtime", (r".*-bins", r".*-libs", r".*-locale", r".*-misc", r".*")),
)

VERSION6_DEFAULTS = Defaults(
    build_systems={
        bs.name: bs for bs in (
            _bs("manual", strip=()),
            _bs("autotools",
                configure=(
                    "export NOCONFIGURE=1; if [ -e autogen ]; then ./autogen; "
                    "elif [ -e autogen.sh ]; then ./autogen.sh; "
                    "elif [ ! -e ./configure ]; then autoreconf -ivf; fi",
                    './configure --prefix="$PREFIX"',
                ),
                build=("make",), install=('make DESTDIR="$DESTDIR" install',)),
            _bs("python-distutils", build=("python setup.py build",),
                install=('python setup.py install --prefix "$PREFIX" --root "$DESTDIR"',)),
            _bs("cpan", configure=("perl Makefile.PL PREFIX=$DESTDIR$PREFIX",),
                build=("make",), install=("make install",)),
            _bs("module-build", configure=('perl Build.PL --prefix "$DESTDIR$PREFIX"',),
                build=("./Build",), install=("./Build install",)),
            _bs("cmake", configure=('cmake -DCMAKE_INSTALL_PREFIX="$PREFIX"',),
                build=("make",), install=('make DESTDIR="$DESTDIR" install',)),
            _bs("qmake", configure=("qmake -makefile",), build=("make",),
                install=('make INSTALL_ROOT="$DESTDIR" install',)),
        )
    },
    chunk_split_rules=CHUNK_SPLIT_RULES,
    stratum_split_rules=STRATUM_SPLIT_RULES,
)
