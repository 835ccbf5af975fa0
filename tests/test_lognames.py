from distbuild.lognames import log_names


def test_chunks_by_name_and_clashes_made_unique():
    names = log_names(["chunk:core/perl", "chunk:tools/groff", "chunk:cross/groff",
                       "stratum:core", "system:devel", "chunk:x/stratum-core"])
    assert names["chunk:core/perl"] == "build-step-perl.log"
    assert names["chunk:tools/groff"] == "build-step-tools-groff.log"
    assert names["chunk:cross/groff"] == "build-step-cross-groff.log"
    assert names["system:devel"] == "build-step-system-devel.log"
    # A chunk literally named stratum-core would clash with the stratum: both fall back.
    assert names["stratum:core"] == "build-step-stratum-core.log"
    assert names["chunk:x/stratum-core"] == "build-step-chunk-x-stratum-core.log"
    assert len(set(names.values())) == len(names)


def test_names_are_safe_file_names():
    names = log_names(["chunk:s/we ird/../name"])
    assert "/" not in names["chunk:s/we ird/../name"].removeprefix("build-step-")
