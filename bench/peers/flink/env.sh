# sourced by setup and run: where the Flink peer's venv and connector jar live
SN_FLINK_VERSION=${SN_FLINK_VERSION:-2.2.1}
SN_FLINK_CONNECTOR_VERSION=${SN_FLINK_CONNECTOR_VERSION:-5.0.0-2.2}
# SHA-1 published next to the jar on Maven Central (…/flink-sql-connector-kafka-5.0.0-2.2.jar.sha1)
SN_FLINK_CONNECTOR_SHA1=${SN_FLINK_CONNECTOR_SHA1:-7bf2ded1144cb8aece05adcaccbc81b2ac3ef339}
SN_FLINK_CONNECTOR_SIZE=${SN_FLINK_CONNECTOR_SIZE:-10666527}
SN_FLINK_HOME=${STREAMNB_CACHE:-$HOME/.cache/streamnb}/peers/flink
SN_FLINK_VENV=$SN_FLINK_HOME/venv-$SN_FLINK_VERSION
SN_FLINK_JAR=$SN_FLINK_HOME/jars/flink-sql-connector-kafka-$SN_FLINK_CONNECTOR_VERSION.jar
SN_FLINK_JAR_URL=https://repo1.maven.org/maven2/org/apache/flink/flink-sql-connector-kafka/$SN_FLINK_CONNECTOR_VERSION/flink-sql-connector-kafka-$SN_FLINK_CONNECTOR_VERSION.jar
