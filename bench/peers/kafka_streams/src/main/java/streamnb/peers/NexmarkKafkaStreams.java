package streamnb.peers;

import com.fasterxml.jackson.annotation.JsonPropertyOrder;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import com.fasterxml.jackson.module.blackbird.BlackbirdModule;
import java.io.File;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.common.utils.AppInfoParser;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.LogAndContinueExceptionHandler;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.SessionWindows;
import org.apache.kafka.streams.kstream.Suppressed;
import org.apache.kafka.streams.kstream.Suppressed.BufferConfig;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.kstream.Windowed;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.TimestampExtractor;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.SessionStore;
import org.apache.kafka.streams.state.Stores;
import org.apache.kafka.streams.state.WindowStore;
import org.apache.kafka.common.utils.Bytes;

/**
 * The Nexmark queries of streamnb's benchmark (bench/queries.py, q8 of bench/nexmark_joins.py)
 * in the Kafka Streams DSL: JSON in, one JSON object per result row out.
 *
 * <p>Event time is each record's {@code dateTime} (epoch ms), read by a TimestampExtractor from
 * the value the source serde already decoded (Kafka Streams deserializes before it extracts the
 * timestamp, so the JSON is parsed once). Windowed queries use grace 4 s and
 * {@code suppress(untilWindowCloses(unbounded()))}: only final rows, emitted once stream time
 * reaches window end + grace.
 */
public final class NexmarkKafkaStreams {
  static final ObjectMapper JSON = JsonMapper.builder()
      .addModule(new BlackbirdModule())
      .configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, false)
      .build();

  static final long TEN_S = 10_000L, TWO_S = 2_000L, ONE_S = 1_000L, GRACE = 4_000L;
  static final byte[] EMPTY = new byte[0];
  static final AtomicBoolean FIRST = new AtomicBoolean();

  // -- records ----------------------------------------------------------------------------------
  interface Timed { long time(); }

  @JsonPropertyOrder({"auction", "bidder", "price", "channel", "url", "dateTime", "extra"})
  public static final class Bid implements Timed {
    public long auction, bidder, price;
    public String channel, url;
    public long dateTime;
    public String extra;
    @Override public long time() { return dateTime; }
  }

  /** Only the columns q8 reads (unknown properties are skipped). */
  public static final class Person implements Timed {
    public long id;
    public String name;
    public long dateTime;
    @Override public long time() { return dateTime; }
  }

  public static final class Auction implements Timed {
    public long seller;
    public long dateTime;
    @Override public long time() { return dateTime; }
  }

  @JsonPropertyOrder({"auction", "bidder", "price", "channel", "url", "dateTime", "extra"})
  public record Q1(long auction, long bidder, double price, String channel, String url,
                   long dateTime, String extra) {}
  public record Q2(long auction, long price) {}
  public record Q5(long window_start, long window_end, long auction, long bids) {}
  public record Q7(long window_start, long window_end, long price) {}
  public record Q11(long window_start, long window_end, long bidder, long bids) {}
  public record Q8(long window_start, long window_end, long id, String name) {}

  /** q8's co-grouped state per (window, id): the person's name if seen, and whether an auction was. */
  public static final class Q8Agg {
    public String name;
    public boolean auction;
  }

  // -- serdes -----------------------------------------------------------------------------------
  static <T> Serde<T> json(Class<T> type) {
    Serializer<T> ser = (topic, v) -> {
      if (v == null) return null;
      try {
        return JSON.writeValueAsBytes(v);
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
    };
    Deserializer<T> de = (topic, b) -> {
      if (b == null) return null;
      try {
        return JSON.readValue(b, type);
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
    };
    return Serdes.serdeFrom(ser, de);
  }

  static byte[] bytes(Object row) {
    try {
      return JSON.writeValueAsBytes(row);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  /** Event time = the decoded value's dateTime (the record timestamp if it did not decode). */
  public static final class DateTimeExtractor implements TimestampExtractor {
    @Override
    public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
      return record.value() instanceof Timed t ? t.time() : record.timestamp();
    }
  }

  static <V> KStream<byte[], V> source(StreamsBuilder b, String topic, Serde<V> serde) {
    KStream<byte[], V> s = b.stream(topic, Consumed.with(Serdes.ByteArray(), serde)
        .withTimestampExtractor(new DateTimeExtractor()));
    return s.peek((k, v) -> {
      if (!FIRST.get() && FIRST.compareAndSet(false, true)) {
        System.out.println("SN_FIRST_RECORD " + System.currentTimeMillis());
        System.out.flush();
      }
    });
  }

  // -- q5's max step ------------------------------------------------------------------------------
  /**
   * Keeps, per hopping window, the auctions whose final count is the window's maximum.
   *
   * <p>Exact because the final rows of one window arrive together: the suppress buffer is
   * ordered by window end and evicts every row of a window in one call once stream time passes
   * end + grace (later updates of that window are dropped as late upstream). So a window's group
   * is complete when a row of another window arrives, or at the next wall-clock punctuation
   * (which never runs inside a processing call).
   */
  static final class MaxPerWindow implements Processor<Windowed<Long>, Long, byte[], byte[]> {
    private ProcessorContext<byte[], byte[]> ctx;
    private long start = Long.MIN_VALUE, max = -1;
    private final List<Long> auctions = new ArrayList<>();

    @Override
    public void init(ProcessorContext<byte[], byte[]> context) {
      ctx = context;
      ctx.schedule(Duration.ofMillis(100), PunctuationType.WALL_CLOCK_TIME, now -> flush());
    }

    @Override
    public void process(Record<Windowed<Long>, Long> r) {
      if (r.value() == null) return;
      long ws = r.key().window().start();
      if (ws != start) {
        flush();
        start = ws;
      }
      long c = r.value();
      if (c > max) {
        max = c;
        auctions.clear();
      }
      if (c == max) auctions.add(r.key().key());
    }

    private void flush() {
      for (long a : auctions) {
        ctx.forward(new Record<>(null, bytes(new Q5(start, start + TEN_S, a, max)), start + TEN_S - 1));
      }
      auctions.clear();
      max = -1;
      start = Long.MIN_VALUE;
    }
  }

  // -- topologies -------------------------------------------------------------------------------
  static Topology build(Options o) {
    StreamsBuilder b = new StreamsBuilder();
    Serde<byte[]> raw = Serdes.ByteArray();
    Produced<byte[], byte[]> out = Produced.with(raw, raw);
    Serde<Bid> bidSerde = json(Bid.class);
    switch (o.query) {
      case "q0" -> {
        KStream<byte[], Bid> bids = source(b, o.bids, bidSerde);
        bids.to(o.output, Produced.with(raw, bidSerde));
      }
      case "q1" -> {
        KStream<byte[], Bid> bids = source(b, o.bids, bidSerde);
        bids.mapValues(x -> bytes(new Q1(x.auction, x.bidder, x.price * 0.908, x.channel, x.url,
            x.dateTime, x.extra))).to(o.output, out);
      }
      case "q2" -> {
        KStream<byte[], Bid> bids = source(b, o.bids, bidSerde);
        bids.filter((k, x) -> x.auction % 123 == 0)
            .mapValues(x -> bytes(new Q2(x.auction, x.price))).to(o.output, out);
      }
      case "q5" -> {
        KStream<byte[], Bid> bids = source(b, o.bids, bidSerde);
        bids.map((k, x) -> KeyValue.pair(x.auction, EMPTY))
            .groupByKey(Grouped.with("q5-by-auction", Serdes.Long(), raw))
            .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofMillis(TEN_S), Duration.ofMillis(GRACE))
                .advanceBy(Duration.ofMillis(TWO_S)))
            .count(o.windowStore("q5-counts", TEN_S, Serdes.Long(), Serdes.Long()))
            .suppress(o.suppressed("q5-final"))
            .toStream()
            .process(MaxPerWindow::new)
            .to(o.output, out);
      }
      case "q7" -> {
        KStream<byte[], Bid> bids = source(b, o.bids, bidSerde);
        bids.map((k, x) -> KeyValue.pair(0L, x.price))
            .groupByKey(Grouped.with("q7-all", Serdes.Long(), Serdes.Long()))
            .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofMillis(TEN_S), Duration.ofMillis(GRACE)))
            .reduce(Math::max, o.windowStore("q7-max", TEN_S, Serdes.Long(), Serdes.Long()))
            .suppress(o.suppressed("q7-final"))
            .toStream()
            .map((w, p) -> KeyValue.pair((byte[]) null,
                bytes(new Q7(w.window().start(), w.window().end(), p))))
            .to(o.output, out);
      }
      case "w1" -> {
        // bids per auction, tumbling 1 s, final rows (the latency harness's window emit)
        KStream<byte[], Bid> bids = source(b, o.bids, bidSerde);
        bids.map((k, x) -> KeyValue.pair(x.auction, EMPTY))
            .groupByKey(Grouped.with("w1-by-auction", Serdes.Long(), raw))
            .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofMillis(ONE_S), Duration.ofMillis(GRACE)))
            .count(o.windowStore("w1-counts", ONE_S, Serdes.Long(), Serdes.Long()))
            .suppress(o.suppressed("w1-final"))
            .toStream()
            .map((w, n) -> KeyValue.pair((byte[]) null,
                bytes(new Q5(w.window().start(), w.window().end(), w.key(), n))))
            .to(o.output, out);
      }
      case "q11" -> {
        // Kafka Streams merges a record into a session when it is at most `gap` ms from it
        // (inclusive); the reference starts a new session at >= 10 s, so the gap is 9 999 ms,
        // and grace 4 001 ms keeps the close time at last bid + 10 s + 4 s (suppress closes a
        // session at end + gap + grace <= stream time).
        KStream<byte[], Bid> bids = source(b, o.bids, bidSerde);
        bids.map((k, x) -> KeyValue.pair(x.bidder, EMPTY))
            .groupByKey(Grouped.with("q11-by-bidder", Serdes.Long(), raw))
            .windowedBy(SessionWindows.ofInactivityGapAndGrace(Duration.ofMillis(TEN_S - 1),
                Duration.ofMillis(GRACE + 1)))
            .count(o.sessionStore("q11-sessions", Serdes.Long(), Serdes.Long()))
            .suppress(o.suppressed("q11-final"))
            .toStream()
            .filter((w, c) -> c != null)
            .map((w, c) -> KeyValue.pair((byte[]) null,
                bytes(new Q11(w.window().start(), w.window().end() + TEN_S, w.key(), c))))
            .to(o.output, out);
      }
      case "q8" -> {
        // Persons and auctions are merged into one stream keyed by person id / seller (value:
        // the name, or "" for an auction) before the one repartition and windowed aggregate.
        // (A cogroup() of two repartitioned streams runs one aggregate processor per input,
        // each with its own stream time: when one input's repartition topic runs ahead, the
        // other's records update windows that suppress has already emitted, and the row is
        // emitted twice. Merging upstream keeps one stream time, and the source task reads the
        // two input topics in timestamp order.)
        Serde<Q8Agg> aggSerde = json(Q8Agg.class);
        KStream<Long, String> people = NexmarkKafkaStreams.<Person>source(b, o.persons, json(Person.class))
            .map((k, p) -> KeyValue.pair(p.id, p.name == null ? "?" : p.name));
        KStream<Long, String> sellers = NexmarkKafkaStreams.<Auction>source(b, o.auctions, json(Auction.class))
            .map((k, a) -> KeyValue.pair(a.seller, ""));
        people.merge(sellers)
            .groupByKey(Grouped.with("q8-by-id", Serdes.Long(), Serdes.String()))
            .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofMillis(TEN_S), Duration.ofMillis(GRACE)))
            .aggregate(Q8Agg::new, (id, v, agg) -> {
                  if (v.isEmpty()) agg.auction = true;
                  else if (agg.name == null) agg.name = v;
                  return agg;
                }, o.windowStore("q8-agg", TEN_S, Serdes.Long(), aggSerde))
            .suppress(o.suppressed("q8-final"))
            .toStream()
            .filter((w, a) -> a != null && a.name != null && a.auction)
            .map((w, a) -> KeyValue.pair((byte[]) null,
                bytes(new Q8(w.window().start(), w.window().end(), w.key(), a.name))))
            .to(o.output, out);
      }
      default -> throw new IllegalArgumentException("unknown query " + o.query);
    }
    return b.build(o.props());
  }

  // -- options ----------------------------------------------------------------------------------
  static final class Options {
    String bootstrap = "127.0.0.1:9092", query, bids = "bids", persons = "persons",
        auctions = "auctions", output, group, trigger = "default";
    long commitMs = 1000, lingerMs = 100;
    int threads = 1;
    long cacheBytes = 64L << 20;
    boolean changelog = true, describe, memoryStores = false;
    String stateDir;

    /** A window store: RocksDB (Kafka Streams' default) or in memory (--store memory). */
    <K, V> Materialized<K, V, WindowStore<Bytes, byte[]>> windowStore(
        String name, long size, Serde<K> k, Serde<V> v) {
      Materialized<K, V, WindowStore<Bytes, byte[]>> m = memoryStores
          ? Materialized.as(Stores.inMemoryWindowStore(name, Duration.ofMillis(size + GRACE + 1),
              Duration.ofMillis(size), false))
          : Materialized.as(name);
      m = m.withKeySerde(k).withValueSerde(v);
      return changelog ? m : m.withLoggingDisabled();
    }

    <K, V> Materialized<K, V, SessionStore<Bytes, byte[]>> sessionStore(String name, Serde<K> k, Serde<V> v) {
      Materialized<K, V, SessionStore<Bytes, byte[]>> m = memoryStores
          ? Materialized.as(Stores.inMemorySessionStore(name, Duration.ofMillis(TEN_S + GRACE + 1)))
          : Materialized.as(name);
      m = m.withKeySerde(k).withValueSerde(v);
      return changelog ? m : m.withLoggingDisabled();
    }

    Suppressed<Windowed<?>> suppressed(String name) {
      Suppressed.StrictBufferConfig buf = BufferConfig.unbounded();
      if (!changelog) buf = buf.withLoggingDisabled();
      return Suppressed.untilWindowCloses(buf).withName(name);
    }

    Properties props() {
      Properties p = new Properties();
      p.put(StreamsConfig.APPLICATION_ID_CONFIG, group);
      p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
      p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
      p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, commitMs);
      p.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, cacheBytes);
      p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
      p.put(StreamsConfig.TOPOLOGY_OPTIMIZATION_CONFIG, StreamsConfig.OPTIMIZE);
      p.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
      p.put(StreamsConfig.DEFAULT_DESERIALIZATION_EXCEPTION_HANDLER_CLASS_CONFIG,
          LogAndContinueExceptionHandler.class);
      p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
      p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
      p.put(StreamsConfig.consumerPrefix(ConsumerConfig.MAX_POLL_RECORDS_CONFIG), 10_000);
      p.put(StreamsConfig.consumerPrefix(ConsumerConfig.MAX_PARTITION_FETCH_BYTES_CONFIG), 8 << 20);
      p.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), (int) lingerMs);
      p.put(StreamsConfig.producerPrefix(ProducerConfig.BATCH_SIZE_CONFIG), 256 << 10);
      p.put(StreamsConfig.producerPrefix(ProducerConfig.COMPRESSION_TYPE_CONFIG), "none");
      return p;
    }

    String describe() {
      return "Kafka Streams " + AppInfoParser.getVersion() + " (Java " + System.getProperty("java.version")
          + ", Jackson+Blackbird JSON): num.stream.threads=" + threads + " commit.interval.ms=" + commitMs
          + " statestore.cache.max.bytes=" + cacheBytes + " at_least_once topology.optimization=all"
          + " stores=" + (memoryStores ? "in-memory" : "rocksdb") + " changelogs=" + (changelog ? "on" : "off") + " grace=4s suppress=untilWindowCloses(unbounded)"
          + " consumer max.poll.records=10000 max.partition.fetch.bytes=8MiB"
          + " producer linger.ms=" + lingerMs + " batch.size=256KiB compression=none"
          + " heap=" + (Runtime.getRuntime().maxMemory() >> 20) + "MiB";
    }
  }

  static Options parse(String[] args) {
    Options o = new Options();
    for (int i = 0; i < args.length; i++) {
      String a = args[i];
      if (a.equals("--describe")) { o.describe = true; continue; }
      if (i + 1 >= args.length) throw new IllegalArgumentException(a + " needs a value");
      String v = args[++i];
      switch (a) {
        case "--bootstrap" -> o.bootstrap = v;
        case "--query" -> o.query = v;
        case "--bids" -> o.bids = v;
        case "--persons" -> o.persons = v;
        case "--auctions" -> o.auctions = v;
        case "--output" -> o.output = v;
        case "--group" -> o.group = v;
        case "--trigger" -> o.trigger = v; // Spark's option; ignored here
        case "--commit-interval-ms" -> o.commitMs = Long.parseLong(v);
        case "--linger-ms" -> o.lingerMs = Long.parseLong(v);
        case "--threads" -> o.threads = Integer.parseInt(v);
        case "--cache-bytes" -> o.cacheBytes = Long.parseLong(v);
        case "--changelog" -> o.changelog = !v.equals("off");
        case "--store" -> o.memoryStores = v.equals("memory");
        case "--state-dir" -> o.stateDir = v;
        default -> throw new IllegalArgumentException("unknown option " + a);
      }
    }
    return o;
  }

  /** Partitions of topic (1 if it cannot be described within 15 s). */
  static int partitions(String bootstrap, String topic) {
    Properties p = new Properties();
    p.put("bootstrap.servers", bootstrap);
    try (Admin admin = Admin.create(p)) {
      return admin.describeTopics(List.of(topic)).allTopicNames().get(15, java.util.concurrent.TimeUnit.SECONDS)
          .get(topic).partitions().size();
    } catch (Exception e) {
      System.err.println("nexmark-kafka-streams: could not describe " + topic + ": " + e);
      return 1;
    }
  }

  static void deleteTree(Path p) {
    if (!Files.exists(p)) return;
    try (var walk = Files.walk(p)) {
      walk.sorted(Comparator.reverseOrder()).map(Path::toFile).forEach(File::delete);
    } catch (IOException ignored) {
      // best effort
    }
  }

  public static void main(String[] args) throws Exception {
    Options o;
    try {
      o = parse(args);
    } catch (IllegalArgumentException e) {
      System.err.println("nexmark-kafka-streams: " + e.getMessage());
      System.exit(2);
      return;
    }
    if (o.describe) {
      System.out.println(o.describe());
      return;
    }
    if (o.query == null || o.output == null || o.group == null) {
      System.err.println("nexmark-kafka-streams: --query, --output and --group are required");
      System.exit(2);
    }
    if (!List.of("q0", "q1", "q2", "q5", "q7", "q8", "q11", "w1").contains(o.query)) {
      System.out.println("SN_UNSUPPORTED query " + o.query + " is not implemented by this peer");
      System.out.flush();
      System.exit(3);
    }
    if (o.query.equals("q5")) {
      // the max step keeps a window's rows together only within one task: exact for 1 partition
      int parts = partitions(o.bootstrap, o.bids);
      if (parts > 1) {
        System.out.println("SN_UNSUPPORTED q5's max-per-window step runs per task (input partition): "
            + "exact for a 1-partition bids topic only, " + o.bids + " has " + parts);
        System.out.flush();
        System.exit(3);
      }
    }
    Path stateDir = Path.of(o.stateDir != null ? o.stateDir
        : System.getProperty("java.io.tmpdir") + "/streamnb-ks-" + o.group + "-" + ProcessHandle.current().pid());
    o.stateDir = stateDir.toString();
    Topology topology = build(o);
    System.err.println("nexmark-kafka-streams: " + o.describe());
    System.err.println(topology.describe());

    KafkaStreams streams = new KafkaStreams(topology, o.props());
    streams.cleanUp();
    CountDownLatch done = new CountDownLatch(1);
    AtomicInteger exit = new AtomicInteger(0);
    streams.setUncaughtExceptionHandler(e -> {
      System.err.println("nexmark-kafka-streams: stream thread failed: " + e);
      e.printStackTrace();
      exit.set(1);
      done.countDown();
      return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
    });
    streams.setStateListener((now, before) -> {
      if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) done.countDown();
    });
    AtomicBoolean closing = new AtomicBoolean();
    Thread hook = new Thread(() -> {
      closing.set(true);
      streams.close(Duration.ofSeconds(10));
      deleteTree(stateDir);
      System.out.flush();
      System.err.flush();
      Runtime.getRuntime().halt(exit.get()); // a requested stop exits 0, not 143
    }, "sn-shutdown");
    Runtime.getRuntime().addShutdownHook(hook);
    streams.start();
    done.await();
    if (!closing.get()) {
      streams.close(Duration.ofSeconds(10));
      deleteTree(stateDir);
      System.exit(exit.get() == 0 ? 1 : exit.get());
    }
  }
}
