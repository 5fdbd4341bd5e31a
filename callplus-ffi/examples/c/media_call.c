/*
 * media_call: alice calls bob with built-in media on; both hear each other, then alice hangs
 * up. Exits 0 only if each side received the other's audio frames through its media sink.
 *
 *   ./media_call ENDPOINT ALICE_TOKEN BOB_TOKEN
 *   (or CALLPLUS_ENDPOINT, CALLPLUS_ALICE_TOKEN, CALLPLUS_BOB_TOKEN in the environment)
 *
 * Both clients bind their media to 127.0.0.1, so this runs on one host with no network.
 * alice's microphone is the library's built-in test tone. bob is an app that feeds its own
 * encoded audio: a capture thread pushes one Opus packet every 20 ms
 * (callplus_client_push_audio_sample); here the packet is Opus "silence" (a real app pushes
 * what its encoder makes). Remote frames arrive in each side's media sink callback
 * (callplus_client_set_media_sink) on a library thread; events, including the media events
 * (first frame, audio level, status reports), arrive in an event callback.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "callplus.h"

/* Frames each side must receive: half a second of 20 ms packets. */
#define FRAMES_WANTED 25

/* One 20 ms Opus packet of silence (CELT, fullband, mono). */
static const uint8_t SILENCE[] = {0xf8, 0xff, 0xfe};

/* Upper bound of any single wait, in ms (generous: the test runs this under valgrind too). */
static long wait_ms(void) {
    const char *s = getenv("CALLPLUS_WAIT_MS");
    return s ? atol(s) : 60000;
}

static int check(const char *who, const char *what, callplus_result r) {
    if (r != CALLPLUS_RESULT_OK) {
        fprintf(stderr, "%s: %s failed: %d (%s)\n", who, what, (int)r, callplus_result_message(r));
        return 0;
    }
    return 1;
}

/* What one user's callbacks saw; guarded by `lock`. */
struct party {
    const char *name;
    const char *peer;
    callplus_client *client;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int accept_result; /* bob: 1 accepted, -1 failed */
    int connected;
    int ended;
    int first_frame;
    size_t frames;     /* audio frames from the peer */
    size_t bad_frames; /* from someone else, empty, out of order, or (alice) not bob's bytes */
    int64_t last_timestamp_us;
    uint32_t duration_us;
};

static void party_init(struct party *p, const char *name, const char *peer) {
    memset(p, 0, sizeof *p);
    p->name = name;
    p->peer = peer;
    p->last_timestamp_us = -1;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->changed, NULL);
}

static void party_destroy(struct party *p) {
    pthread_cond_destroy(&p->changed);
    pthread_mutex_destroy(&p->lock);
}

/* The media sink: runs on a library thread for every remote frame. The frame is borrowed:
 * a real app copies the bytes to its decoder here. */
static void on_frame(void *user_data, const callplus_media_frame *frame) {
    struct party *p = user_data;
    int good = frame->kind == CALLPLUS_MEDIA_KIND_AUDIO && frame->len > 0 &&
               strcmp(frame->user_id, p->peer) == 0;
    /* alice hears exactly the packets bob pushed. */
    if (good && strcmp(p->name, "alice") == 0)
        good = frame->len == sizeof SILENCE && memcmp(frame->data, SILENCE, sizeof SILENCE) == 0;
    pthread_mutex_lock(&p->lock);
    if (good && frame->timestamp_us > p->last_timestamp_us) {
        if (p->frames == 0)
            printf("%s: first audio frame from %s in call %s: %zu bytes, %u us\n", p->name,
                   frame->user_id, frame->call_id, frame->len, frame->duration_us);
        p->frames++;
        p->last_timestamp_us = frame->timestamp_us;
        p->duration_us = frame->duration_us;
    } else {
        p->bad_frames++;
    }
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
}

static void print_event(const char *who, const callplus_event *event) {
    callplus_event_type type = callplus_event_kind(event);
    /* Both clients' callback threads print: hold stdout so the line is not interleaved. */
    flockfile(stdout);
    printf("%s: event %s", who, callplus_event_type_name(type));
    if (callplus_event_call_id(event)) printf(" call=%s", callplus_event_call_id(event));
    if (callplus_event_user_id(event)) printf(" user=%s", callplus_event_user_id(event));
    if (type == CALLPLUS_EVENT_TYPE_AUDIO_LEVEL) printf(" level=%u", callplus_event_audio_level(event));
    const callplus_media_stats *stats = callplus_event_stats(event);
    if (stats) {
        printf(" send_loss=%.1f%% rtt=%.0fms", callplus_media_stats_send_loss_pct(stats),
               callplus_media_stats_rtt_ms(stats));
        for (size_t i = 0; i < callplus_media_stats_peer_count(stats); i++)
            printf(" [%s loss=%.1f%% %.0fkbps]", callplus_media_stats_peer_user_id(stats, i),
                   callplus_media_stats_peer_recv_loss_pct(stats, i),
                   callplus_media_stats_peer_bitrate_kbps(stats, i));
    }
    printf(" | %s\n", callplus_event_description(event));
    fflush(stdout);
    funlockfile(stdout);
}

/* The event callback: runs on the library's event thread, one event at a time. */
static void on_event(void *user_data, const callplus_event *event) {
    struct party *p = user_data;
    print_event(p->name, event);
    int accept_result = 0;
    if (callplus_event_kind(event) == CALLPLUS_EVENT_TYPE_RECEIVED_CALL)
        accept_result =
            check(p->name, "accept", callplus_client_accept(p->client, callplus_event_call_id(event)))
                ? 1
                : -1;
    pthread_mutex_lock(&p->lock);
    switch (callplus_event_kind(event)) {
    case CALLPLUS_EVENT_TYPE_CALL_CONNECTED:
        p->connected = 1;
        break;
    case CALLPLUS_EVENT_TYPE_CALL_ENDED:
        p->ended = 1;
        break;
    case CALLPLUS_EVENT_TYPE_FIRST_FRAME:
        p->first_frame = 1;
        break;
    default:
        break;
    }
    if (accept_result) p->accept_result = accept_result;
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
}

/* Waits until `done(p)` holds; 0 on timeout. */
static int party_wait(struct party *p, int (*done)(const struct party *), const char *what) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    long ms = wait_ms();
    deadline.tv_sec += ms / 1000;
    deadline.tv_nsec += (ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000L;
    }
    int rc = 0;
    pthread_mutex_lock(&p->lock);
    while (!done(p) && rc == 0) rc = pthread_cond_timedwait(&p->changed, &p->lock, &deadline);
    int ok = done(p);
    pthread_mutex_unlock(&p->lock);
    if (!ok) fprintf(stderr, "%s: timed out waiting for %s\n", p->name, what);
    return ok;
}

static int is_accepted(const struct party *p) { return p->accept_result != 0; }
static int is_connected(const struct party *p) { return p->connected; }
static int is_ended(const struct party *p) { return p->ended; }
static int heard_enough(const struct party *p) { return p->first_frame && p->frames >= FRAMES_WANTED; }

/* ----- bob's microphone: a capture thread pushing one packet per 20 ms -------------------- */

struct microphone {
    callplus_client *client;
    pthread_mutex_t lock;
    int stop;
    size_t pushed;
    callplus_result last_refusal;
};

static void *capture(void *arg) {
    struct microphone *mic = arg;
    for (;;) {
        pthread_mutex_lock(&mic->lock);
        int stop = mic->stop;
        pthread_mutex_unlock(&mic->lock);
        if (stop) break;
        callplus_result r =
            callplus_client_push_audio_sample(mic->client, SILENCE, sizeof SILENCE, 20000);
        pthread_mutex_lock(&mic->lock);
        if (r == CALLPLUS_RESULT_OK) mic->pushed++;
        else mic->last_refusal = r;
        pthread_mutex_unlock(&mic->lock);
        /* NOT_IN_CALL: the call is over. */
        if (r != CALLPLUS_RESULT_OK) break;
        /* A real microphone delivers a packet every 20 ms; this paces the stand-in. */
        struct timespec frame = {0, 20 * 1000 * 1000};
        nanosleep(&frame, NULL);
    }
    return NULL;
}

static callplus_result connect_party(const char *endpoint, const char *token, struct party *p,
                                     struct callplus_client_options options) {
    options.enable_media = true;
    options.media_bind_address = "127.0.0.1";
    callplus_result r = callplus_client_connect_with_options(endpoint, token, &options, &p->client);
    if (r != CALLPLUS_RESULT_OK) return r;
    r = callplus_client_set_media_sink(p->client, on_frame, p);
    if (r != CALLPLUS_RESULT_OK) return r;
    return callplus_client_set_event_callback(p->client, on_event, p);
}

int main(int argc, char **argv) {
    const char *endpoint = argc > 1 ? argv[1] : getenv("CALLPLUS_ENDPOINT");
    const char *alice_token = argc > 2 ? argv[2] : getenv("CALLPLUS_ALICE_TOKEN");
    const char *bob_token = argc > 3 ? argv[3] : getenv("CALLPLUS_BOB_TOKEN");
    if (!endpoint || !alice_token || !bob_token) {
        fprintf(stderr, "usage: %s ENDPOINT ALICE_TOKEN BOB_TOKEN\n", argv[0]);
        return 2;
    }

    int ok = 0, capturing = 0;
    struct party alice, bob;
    party_init(&alice, "alice", "bob");
    party_init(&bob, "bob", "alice");
    struct microphone mic = {.client = NULL, .last_refusal = CALLPLUS_RESULT_OK};
    pthread_mutex_init(&mic.lock, NULL);
    pthread_t capture_thread;
    callplus_string *call_id = NULL;
    const char *callees[] = {"bob"};

    struct callplus_client_options alice_options = {0};
    alice_options.tone_hz = 440;
    struct callplus_client_options bob_options = {0};
    bob_options.app_microphone = true;
    if (!check("alice", "connect", connect_party(endpoint, alice_token, &alice, alice_options)))
        goto done;
    if (!check("bob", "connect", connect_party(endpoint, bob_token, &bob, bob_options))) goto done;

    if (!check("alice", "start_call",
               callplus_client_start_call(alice.client, callees, 1, CALLPLUS_CALL_TYPE_SINGLE,
                                          CALLPLUS_MEDIA_TYPE_AUDIO, NULL, &call_id)))
        goto done;
    printf("alice: calling bob, call %s\n", callplus_string_data(call_id));
    if (!party_wait(&bob, is_accepted, "the call") || bob.accept_result != 1) goto done;
    if (!party_wait(&bob, is_connected, "bob connected")) goto done;
    if (!party_wait(&alice, is_connected, "alice connected")) goto done;

    /* bob's microphone starts with the call. */
    mic.client = bob.client;
    if (pthread_create(&capture_thread, NULL, capture, &mic) != 0) goto done;
    capturing = 1;

    if (!party_wait(&bob, heard_enough, "alice's audio")) goto done;
    if (!party_wait(&alice, heard_enough, "bob's audio")) goto done;

    if (!check("alice", "hangup", callplus_client_hangup(alice.client, NULL))) goto done;
    if (!party_wait(&alice, is_ended, "the end of the call")) goto done;
    if (!party_wait(&bob, is_ended, "the end of the call")) goto done;
    ok = 1;

done:
    if (capturing) {
        pthread_mutex_lock(&mic.lock);
        mic.stop = 1;
        pthread_mutex_unlock(&mic.lock);
        pthread_join(capture_thread, NULL);
    }
    /* Removing the callbacks waits for running ones; freeing would too. */
    if (alice.client) {
        callplus_client_set_media_sink(alice.client, NULL, NULL);
        callplus_client_set_event_callback(alice.client, NULL, NULL);
    }
    if (bob.client) {
        callplus_client_set_media_sink(bob.client, NULL, NULL);
        callplus_client_set_event_callback(bob.client, NULL, NULL);
    }
    callplus_string_free(call_id);
    callplus_client_free(alice.client);
    callplus_client_free(bob.client);

    printf("bob: received %zu audio frames from alice (%zu bad, %u us each)\n", bob.frames,
           bob.bad_frames, bob.duration_us);
    printf("alice: received %zu audio frames from bob (%zu bad, %u us each)\n", alice.frames,
           alice.bad_frames, alice.duration_us);
    printf("bob: pushed %zu packets; last refusal: %s\n", mic.pushed,
           callplus_result_message(mic.last_refusal));
    ok = ok && bob.frames >= FRAMES_WANTED && alice.frames >= FRAMES_WANTED &&
         bob.bad_frames == 0 && alice.bad_frames == 0;
    party_destroy(&alice);
    party_destroy(&bob);
    pthread_mutex_destroy(&mic.lock);
    printf("media_call: %s\n", ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
}
