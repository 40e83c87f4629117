package im.sdk

import java.io.File
import java.net.ServerSocket
import java.net.Socket
import java.nio.file.Files
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeEach
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/** im-server (gateway, logic and embedded store in one process) on a fixed port and data
 *  directory, so it can be killed and started again where it was. */
class Server(private val binary: String, private val dataDir: File) {
    private val secret = (1..32).joinToString("") { "%02x".format((0..255).random()) }
    val port = ServerSocket(0).use { it.localPort }
    val address = "127.0.0.1:$port"
    private var process: Process? = null

    fun start() {
        process = ProcessBuilder(
            binary, "--listen", address, "--data-dir", dataDir.path, "--secret", secret,
            "--heartbeat-secs", "5", "--rate-limit", "0",
        ).redirectErrorStream(true).redirectOutput(File(dataDir, "server.log")).start()
        val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30)
        while (System.nanoTime() < deadline) {
            check(process!!.isAlive) { "im-server exited: " + File(dataDir, "server.log").readText() }
            try {
                Socket("127.0.0.1", port).close()
                return
            } catch (e: java.io.IOException) {
                Thread.sleep(50)
            }
        }
        error("im-server did not start listening within 30 s")
    }

    /** SIGKILL: no goodbye to the clients. */
    fun kill() {
        process?.destroyForcibly()?.waitFor()
    }

    fun token(user: String, device: String): String {
        val minting = ProcessBuilder(
            binary, "token", "--user", user, "--device", device, "--data-dir", dataDir.path,
            "--secret", secret,
        ).start()
        val token = minting.inputStream.bufferedReader().readText().trim()
        check(minting.waitFor() == 0) { "im-server token failed" }
        return token
    }
}

/** Keeps every event; `delayMs` makes it a slow listener. */
class Recorder(private val delayMs: Long = 0) : ClientListener {
    private val events = mutableListOf<ClientEvent>()

    override fun onEvent(event: ClientEvent) {
        if (delayMs > 0) Thread.sleep(delayMs)
        synchronized(events) { events.add(event) }
    }

    fun snapshot(): List<ClientEvent> = synchronized(events) { events.toList() }

    fun received(): List<Message> =
        snapshot().filterIsInstance<ClientEvent.MessageReceived>().map { it.message }

    fun states(): List<ConnectionState> =
        snapshot().filterIsInstance<ClientEvent.StateChanged>().map { it.state }

    fun acknowledged(): List<Message> =
        snapshot().filterIsInstance<ClientEvent.MessageUpdated>().map { it.message }
            .filter { it.state == SendState.SENT }

    suspend fun waitFor(what: String, timeoutMs: Long = 20_000, check: (Recorder) -> Boolean) {
        val deadline = System.currentTimeMillis() + timeoutMs
        while (!check(this)) {
            if (System.currentTimeMillis() > deadline) {
                val last = snapshot().takeLast(20).map { it::class.simpleName }
                throw AssertionError("timed out waiting for $what; last events: $last")
            }
            delay(20)
        }
    }
}

class ClientTest {
    private lateinit var dataDir: File
    private lateinit var appDir: File
    private lateinit var server: Server
    private val opened = mutableListOf<Pair<ImClient, EventSubscription>>()

    @BeforeEach
    fun startServer() {
        dataDir = Files.createTempDirectory("imsdk-server").toFile()
        appDir = Files.createTempDirectory("imsdk-app").toFile()
        server = Server(System.getProperty("imsdk.server"), dataDir)
        server.start()
    }

    @AfterEach
    fun stopAll() {
        runBlocking {
            for ((client, subscription) in opened) {
                subscription.cancel()
                client.shutdown()
                client.close()
            }
        }
        server.kill()
        dataDir.deleteRecursively()
        appDir.deleteRecursively()
    }

    private fun login(user: String, device: String, listener: Recorder = Recorder(), eventCapacity: UInt? = null): Pair<ImClient, Recorder> {
        val client = ImClient(
            ClientOptions(
                server = server.address,
                token = server.token(user, device),
                userId = user,
                deviceId = device,
                dataDir = appDir.path,
                platform = Platform.ANDROID,
                eventCapacity = eventCapacity,
            ),
        )
        opened.add(client to client.subscribe(listener))
        return client to listener
    }

    private suspend fun Recorder.online(times: Int = 1) =
        waitFor("online ($times)") { r -> r.states().count { it == ConnectionState.Online } >= times }

    private fun directTo(user: String) = Recipient.User(user)

    @Test
    fun `two users chat both ways, with unread counts, history paging and a recall`() = runBlocking {
        withTimeout(120_000) {
            val (alice, aliceEvents) = login("alice", "phone")
            val (bob, bobEvents) = login("bob", "tablet")
            aliceEvents.online()
            bobEvents.online()
            val chat = directConversationId("alice", "bob")

            for (i in 0 until 3) alice.sendText(directTo("bob"), "hi bob $i")
            bobEvents.waitFor("bob receiving 3") { it.received().size == 3 }
            assertEquals(listOf("hi bob 0", "hi bob 1", "hi bob 2"), bobEvents.received().map { it.text })
            bobEvents.waitFor("bob's unread count 3") { r ->
                r.snapshot().any { it is ClientEvent.ConversationUpdated && it.conversation.unreadCount == 3UL }
            }
            assertEquals(3UL, bob.conversations().single { it.conversationId == chat }.unreadCount)

            bob.sendText(directTo("alice"), "hello alice")
            bob.sendText(directTo("alice"), "how are you")
            aliceEvents.waitFor("alice receiving 2") { it.received().size == 2 }
            assertEquals(listOf("hello alice", "how are you"), aliceEvents.received().map { it.text })
            assertEquals(2UL, alice.conversations().single { it.conversationId == chat }.unreadCount)

            val marker = bob.markRead(chat, 5UL)
            assertEquals(0UL, marker.unreadCount)
            assertEquals(0UL, bob.conversations().single { it.conversationId == chat }.unreadCount)
            aliceEvents.waitFor("bob's read receipt") { r ->
                r.snapshot().any { it is ClientEvent.ReadReceipt && it.reader == "bob" && it.readSeq == 5UL }
            }

            for (i in 0 until 20) alice.sendText(directTo("bob"), "more $i")
            bobEvents.waitFor("bob receiving 23") { it.received().size == 23 }
            val seqs = mutableListOf<ULong>()
            var anchor = 0UL
            do {
                val page = bob.fetchHistory(chat, anchor, HistoryDirection.OLDER, 10u)
                seqs += page.messages.map { it.seq }
                anchor = page.messages.lastOrNull()?.seq ?: 0UL
            } while (page.hasMore)
            assertEquals((25 downTo 1).map { it.toULong() }, seqs)

            val recall = alice.recall(chat, 1UL)
            assertEquals("alice", recall.byUser)
            bobEvents.waitFor("the recall") { r ->
                r.snapshot().any { it is ClientEvent.MessageRecalled && it.conversationId == chat && it.seq == 1UL }
            }
            val first = bob.localHistory(chat, 2UL, 1u).single()
            assertTrue(first.recalled)
            assertEquals(0, first.content.size)

            val refused = assertThrows<ImException.Server> { runBlocking { bob.recall(chat, 2UL) } }
            assertEquals("NOT_SENDER", refused.name)
            assertEquals(404u, refused.code)
        }
    }

    @Test
    fun `a group is created and posted to`() = runBlocking {
        withTimeout(120_000) {
            val (alice, aliceEvents) = login("alice", "phone")
            val (bob, bobEvents) = login("bob", "phone")
            val (carol, carolEvents) = login("carol", "phone")
            for (events in listOf(aliceEvents, bobEvents, carolEvents)) events.online()

            val group = alice.createGroup("friends", listOf("bob", "carol"), false, "req-1")
            assertEquals(3u, group.memberCount)
            assertEquals(false, group.broadcast)
            val channel = alice.createChannel("news", listOf(), true, "")
            assertEquals(true, channel.broadcast && channel.readFanout)
            for (events in listOf(bobEvents, carolEvents)) {
                events.waitFor("the group's creation") { r ->
                    r.snapshot().any {
                        it is ClientEvent.GroupChanged && it.event.kind == GroupEventKind.Created &&
                            it.event.groupId == group.groupId
                    }
                }
            }
            val toGroup = Recipient.Group(group.groupId)
            // Two senders: carol writes once alice's message has arrived, so the group's order
            // is the one asserted below (sends of two clients are otherwise unordered).
            alice.sendText(toGroup, "hello friends")
            bobEvents.waitFor("bob receiving alice's") { it.received().size == 1 }
            carol.sendText(toGroup, "hi alice")
            bobEvents.waitFor("bob receiving both") { it.received().size == 2 }
            assertEquals(
                listOf("alice" to "hello friends", "carol" to "hi alice"),
                bobEvents.received().map { it.sender to it.text },
            )
            assertTrue(bobEvents.received().all { it.conversationId == groupConversationId(group.groupId) })
            aliceEvents.waitFor("alice receiving carol's") { it.received().size == 1 }

            val refused = assertThrows<ImException.Server> {
                runBlocking { bob.removeGroupMembers(group.groupId, listOf("carol")) }
            }
            assertEquals("FORBIDDEN", refused.name)
        }
    }

    @Test
    fun `the server killed and restarted loses and duplicates nothing`() = runBlocking {
        withTimeout(120_000) {
            val (alice, aliceEvents) = login("alice", "phone")
            val (_, bobEvents) = login("bob", "tablet")
            aliceEvents.online()
            bobEvents.online()
            for (i in 0 until 5) alice.sendText(directTo("bob"), "before $i")
            aliceEvents.waitFor("5 acknowledged") { it.acknowledged().size == 5 }

            server.kill()
            for (events in listOf(aliceEvents, bobEvents)) {
                events.waitFor("the server gone") { r ->
                    r.states().last().let { it == ConnectionState.WaitingToReconnect || it == ConnectionState.Connecting }
                }
            }
            for (i in 0 until 5) {
                assertEquals(SendState.SENDING, alice.sendText(directTo("bob"), "during $i").state)
            }

            server.start()
            aliceEvents.online(times = 2)
            bobEvents.online(times = 2)
            aliceEvents.waitFor("10 acknowledged") { it.acknowledged().size == 10 }
            bobEvents.waitFor("bob receiving 10") { it.received().size >= 10 }
            delay(1_000) // anything duplicated would arrive now
            val expected = (0 until 5).map { "before $it" } + (0 until 5).map { "during $it" }
            assertEquals(expected, bobEvents.received().map { it.text })
            assertEquals((1..10).map { it.toULong() }, bobEvents.received().map { it.seq })
            assertEquals(ConnectionState.Online, bobEvents.states().last())
        }
    }

    @Test
    fun `a slow listener holds the server back without losing anything or disconnecting`() = runBlocking {
        withTimeout(120_000) {
            val capacity = 8u
            val (bob, bobEvents) = login("bob", "tablet", Recorder(delayMs = 10), eventCapacity = capacity)
            val (alice, aliceEvents) = login("alice", "phone")
            bobEvents.online()
            aliceEvents.online()
            val total = 400
            for (i in 0 until total) alice.sendText(directTo("bob"), "m$i")
            aliceEvents.waitFor("all acknowledged") { it.acknowledged().size == total }

            var largestLead = 0L
            while (bobEvents.received().size < total) {
                val status = bob.status()
                largestLead = maxOf(largestLead, status.inboxCursor.toLong() - bobEvents.received().size)
                assertEquals(ConnectionState.Online, status.state)
                delay(100)
            }
            assertTrue(largestLead <= capacity.toLong() + 210, "read $largestLead ahead of the listener")
            assertEquals((0 until total).map { "m$it" }, bobEvents.received().map { it.text })
            assertFalse(bobEvents.states().contains(ConnectionState.WaitingToReconnect))
        }
    }

    @Test
    fun `bad arguments are typed exceptions`() {
        val error = assertThrows<ImException.InvalidArgument> {
            ImClient(ClientOptions(server = "no port", token = "t", userId = "a", deviceId = "d", dataDir = appDir.path))
        }
        assertTrue(error.reason.contains("server"))
    }
}
