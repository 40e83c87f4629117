// The README's Kotlin example, compiled with the tests so that it stays true to the API
// (scripts/bindings.sh kotlin-test). Keep it identical to the README's block.
package im.sdk.readme

import im.sdk.*

class Printer : ClientListener {           // called on a thread of the client's, in order
    override fun onEvent(event: ClientEvent) {
        when (event) {
            is ClientEvent.StateChanged -> println("connection: ${event.state}")
            is ClientEvent.MessageReceived -> println("${event.message.sender}: ${event.message.text}")
            is ClientEvent.ConversationUpdated ->
                println("${event.conversation.conversationId}: ${event.conversation.unreadCount} unread")
            else -> {}
        }
    }
}

suspend fun chat(token: String, filesDir: String) {
    val client = ImClient(ClientOptions(server = "im.example.com:8080", token = token,
        userId = "alice", deviceId = "phone", dataDir = "$filesDir/im"))
    val subscription = client.subscribe(Printer())
    client.sendText(Recipient.User("bob"), "hi bob")
    val chat = directConversationId("alice", "bob")
    client.history(chat, 0u, 20u).forEach { println("${it.seq}: ${it.text}") }
    try {
        client.recall(chat, 1u)
    } catch (refused: ImException.Server) {
        println("${refused.name}: ${refused.reason}")      // e.g. NOT_SENDER
    }
    subscription.cancel()
    client.shutdown()
    client.close()
}
