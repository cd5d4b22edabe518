# sourced by setup and run: where the Spark peer's venv and jars live
SN_SPARK_VERSION=${SN_SPARK_VERSION:-4.0.0}
SN_SPARK_HOME=${STREAMNB_CACHE:-$HOME/.cache/streamnb}/peers/spark
SN_SPARK_VENV=$SN_SPARK_HOME/venv-$SN_SPARK_VERSION
SN_SPARK_IVY=$SN_SPARK_HOME/ivy-$SN_SPARK_VERSION
SN_SPARK_JARS=$SN_SPARK_HOME/jars-$SN_SPARK_VERSION
SN_SPARK_PACKAGE=org.apache.spark:spark-sql-kafka-0-10_2.13:$SN_SPARK_VERSION
