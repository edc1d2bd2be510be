# Apache Kafka (a KRaft broker the Kafka stream tests run against): sourced by .ci/run.
#
# Kafka's jars from Maven Central (the broker and what it needs at run time,
# plus log4j's SLF4J binding) into $FILEPROC_CI_CACHE/kafka-VERSION/libs,
# once, with `mvn dependency:copy-dependencies` on a generated pom;
# tests/kafka_server.py runs `java -cp 'LIBS/*' kafka.Kafka` from there (and
# keeps a class-data-sharing archive beside it, broker.jsa). Exports
# FILEPROC_KAFKA_LIBS and defines nothing else: the work runs in a subshell.
# Built into LIBS.partial and renamed when complete, so an interrupted
# download never looks cached.
export FILEPROC_KAFKA_LIBS="${FILEPROC_CI_CACHE:-/var/cache/fileproc-ci}/kafka-4.1.1/libs"
printf '\n==== %s ====\n' "Apache Kafka (${FILEPROC_KAFKA_LIBS%/libs})"
(
    set -euo pipefail
    # Java 17 runs the broker, Maven fetches it: Debian's packages when the machine lacks them.
    if ! command -v java > /dev/null || ! command -v mvn > /dev/null; then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless maven
    fi
    if compgen -G "$FILEPROC_KAFKA_LIBS/kafka_2.13-*.jar" > /dev/null; then
        echo "cached: $FILEPROC_KAFKA_LIBS"
        exit 0
    fi
    kafka_version=${FILEPROC_KAFKA_LIBS%/libs}
    kafka_version=${kafka_version##*/kafka-}
    log4j_version=2.24.3  # the log4j 2 Kafka 4.1 is built with
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    cat > "$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>fileproc.ci</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$kafka_version</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$log4j_version</version>
    </dependency>
  </dependencies>
</project>
EOF
    rm -rf "$FILEPROC_KAFKA_LIBS.partial"
    mkdir -p "$FILEPROC_KAFKA_LIBS.partial"
    if ! mvn -B -q -f "$work/pom.xml" -Dmaven.repo.local="$work/repository" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$FILEPROC_KAFKA_LIBS.partial" > "$work/mvn.log" 2>&1; then
        cat "$work/mvn.log" >&2
        exit 1
    fi
    rm -rf "$FILEPROC_KAFKA_LIBS"
    mv "$FILEPROC_KAFKA_LIBS.partial" "$FILEPROC_KAFKA_LIBS"
    echo "installed: $(ls "$FILEPROC_KAFKA_LIBS" | wc -l) jars in $FILEPROC_KAFKA_LIBS"
)
