/*
 * two_party: alice calls bob, bob accepts, alice hangs up; both print their events and their
 * call records.
 *
 *   ./two_party ENDPOINT ALICE_TOKEN BOB_TOKEN
 *   (or CALLPLUS_ENDPOINT, CALLPLUS_ALICE_TOKEN, CALLPLUS_BOB_TOKEN in the environment)
 *
 * Start a server with `callplus serve` and mint the tokens with `callplus token alice` and
 * `callplus token bob`.
 *
 * The two users take their events the two ways the library offers: alice polls
 * (callplus_client_poll_event), bob gets them through a callback
 * (callplus_client_set_event_callback), which runs on a thread of the library and may call
 * client functions itself: bob accepts the call from inside his callback.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "callplus.h"

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

/* Prints one event in a stable, grep-able form, then its description. */
static void print_event(const char *who, const callplus_event *event) {
    callplus_event_type type = callplus_event_kind(event);
    const char *call_id = callplus_event_call_id(event);
    /* Both clients' callback threads print: hold stdout so the line is not interleaved. */
    flockfile(stdout);
    printf("%s: event %s", who, callplus_event_type_name(type));
    if (call_id) printf(" call=%s", call_id);
    if (callplus_event_user_id(event)) printf(" user=%s", callplus_event_user_id(event));
    if (callplus_event_reason(event) != CALLPLUS_END_REASON_NONE)
        printf(" reason=%s", callplus_end_reason_name(callplus_event_reason(event)));
    printf(" | %s\n", callplus_event_description(event));
    fflush(stdout);
    funlockfile(stdout);
}

static void print_records(const char *who, const callplus_client *client) {
    /* The server stores records asynchronously: ask again briefly until this call shows up. */
    for (int attempt = 0; attempt < 50; attempt++) {
        callplus_record_page *page = NULL;
        if (!check(who, "get_call_records",
                   callplus_client_get_call_records(client, -1, 10, CALLPLUS_RECORD_ORDER_DESC,
                                                    &page)))
            return;
        size_t n = callplus_record_page_len(page);
        for (size_t i = 0; i < n; i++) {
            const callplus_call_record *r = callplus_record_page_get(page, i);
            const callplus_call_info *call = callplus_call_record_call(r);
            printf("%s: record call=%s owner=%s direction=%s reason=%s duration_ms=%lld "
                   "participants=%zu\n",
                   who, callplus_call_record_call_id(r), callplus_call_record_owner(r),
                   callplus_call_record_direction(r) == CALLPLUS_DIRECTION_OUTGOING ? "OUTGOING"
                                                                                    : "INCOMING",
                   callplus_end_reason_name(callplus_call_record_end_reason(r)),
                   (long long)callplus_call_record_duration_ms(r),
                   callplus_call_info_participant_count(call));
        }
        callplus_record_page_free(page);
        if (n > 0) return;
        struct timespec pause = {0, 100 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    printf("%s: no records\n", who);
}

/* ----- bob: events by callback ------------------------------------------------------------ */

struct bob {
    callplus_client *client;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int accepted; /* 1 accepted, -1 accept failed */
    int ended;
    int recorded;
};

static void on_bob_event(void *user_data, const callplus_event *event) {
    struct bob *bob = user_data;
    print_event("bob", event);
    int accepted = 0, ended = 0, recorded = 0;
    switch (callplus_event_kind(event)) {
    case CALLPLUS_EVENT_TYPE_RECEIVED_CALL: {
        const callplus_call_session *s = callplus_event_session(event);
        printf("bob: %s calls (extra \"%s\")\n", callplus_event_inviter(event),
               callplus_call_session_extra(s));
        /* Client functions may be called from the callback. */
        accepted = check("bob", "accept",
                         callplus_client_accept(bob->client, callplus_event_call_id(event)))
                       ? 1
                       : -1;
        break;
    }
    case CALLPLUS_EVENT_TYPE_CALL_ENDED:
        ended = 1;
        break;
    case CALLPLUS_EVENT_TYPE_RECEIVED_CALL_RECORD:
        recorded = 1;
        break;
    default:
        break;
    }
    pthread_mutex_lock(&bob->lock);
    if (accepted) bob->accepted = accepted;
    if (ended) bob->ended = 1;
    if (recorded) bob->recorded = 1;
    pthread_cond_broadcast(&bob->changed);
    pthread_mutex_unlock(&bob->lock);
}

/* Waits until *flag is set and returns it; 0 on timeout. */
static int bob_wait(struct bob *bob, int *flag, const char *what) {
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
    pthread_mutex_lock(&bob->lock);
    while (!*flag && rc == 0) rc = pthread_cond_timedwait(&bob->changed, &bob->lock, &deadline);
    int value = *flag;
    pthread_mutex_unlock(&bob->lock);
    if (!value) fprintf(stderr, "bob: timed out waiting for %s\n", what);
    return value;
}

/* ----- alice: events by polling ----------------------------------------------------------- */

/* Polls alice's events until one of type `want` (printing all); returns it (caller frees). */
static callplus_event *alice_wait(callplus_client *alice, callplus_event_type want) {
    long left = wait_ms();
    while (left > 0) {
        callplus_event *event = NULL;
        callplus_result r = callplus_client_poll_event(alice, 100, &event);
        if (r == CALLPLUS_RESULT_NO_EVENT) {
            left -= 100;
            continue;
        }
        if (!check("alice", "poll_event", r)) return NULL;
        print_event("alice", event);
        if (callplus_event_kind(event) == want) return event;
        callplus_event_free(event);
    }
    fprintf(stderr, "alice: timed out waiting for %s\n", callplus_event_type_name(want));
    return NULL;
}

int main(int argc, char **argv) {
    const char *endpoint = argc > 1 ? argv[1] : getenv("CALLPLUS_ENDPOINT");
    const char *alice_token = argc > 2 ? argv[2] : getenv("CALLPLUS_ALICE_TOKEN");
    const char *bob_token = argc > 3 ? argv[3] : getenv("CALLPLUS_BOB_TOKEN");
    if (!endpoint || !alice_token || !bob_token) {
        fprintf(stderr, "usage: %s ENDPOINT ALICE_TOKEN BOB_TOKEN\n", argv[0]);
        return 2;
    }
    printf("callplus %s\n", callplus_version());

    int ok = 0;
    callplus_client *alice = NULL;
    callplus_string *call_id = NULL;
    callplus_event *event = NULL;
    callplus_call_session *current = NULL;
    const char *callees[] = {"bob"};
    struct bob bob = {.client = NULL};
    pthread_mutex_init(&bob.lock, NULL);
    pthread_cond_init(&bob.changed, NULL);

    if (!check("alice", "connect", callplus_client_connect(endpoint, alice_token, "alice-c", &alice)))
        goto done;
    if (!check("bob", "connect", callplus_client_connect(endpoint, bob_token, "bob-c", &bob.client)))
        goto done;
    printf("alice: connected as %s\nbob: connected as %s\n", callplus_client_user_id(alice),
           callplus_client_user_id(bob.client));
    if (!check("bob", "set_event_callback",
               callplus_client_set_event_callback(bob.client, on_bob_event, &bob)))
        goto done;

    if (!check("alice", "start_call",
               callplus_client_start_call(alice, callees, 1, CALLPLUS_CALL_TYPE_SINGLE,
                                          CALLPLUS_MEDIA_TYPE_AUDIO, "hello from C", &call_id)))
        goto done;
    printf("alice: calling bob, call %s\n", callplus_string_data(call_id));

    if (bob_wait(&bob, &bob.accepted, "the call") != 1) goto done;
    if (!(event = alice_wait(alice, CALLPLUS_EVENT_TYPE_CALL_CONNECTED))) goto done;
    callplus_event_free(event);
    event = NULL;

    if (!check("alice", "current_call", callplus_client_current_call(alice, &current))) goto done;
    printf("alice: current call %s state=%d type=%d media=%d creator=%s duration_ms=%lld\n",
           callplus_call_session_call_id(current), (int)callplus_call_session_state(current),
           (int)callplus_call_session_call_type(current),
           (int)callplus_call_session_media_type(current), callplus_call_session_creator(current),
           (long long)callplus_call_session_duration_ms(current));
    callplus_call_session_free(current);
    current = NULL;

    if (!check("alice", "hangup", callplus_client_hangup(alice, NULL))) goto done;
    if (!(event = alice_wait(alice, CALLPLUS_EVENT_TYPE_CALL_ENDED))) goto done;
    printf("alice: call ended: %s\n", callplus_end_reason_name(callplus_event_reason(event)));
    callplus_event_free(event);
    event = NULL;
    if (!(event = alice_wait(alice, CALLPLUS_EVENT_TYPE_RECEIVED_CALL_RECORD))) goto done;
    callplus_event_free(event);
    event = NULL;
    if (!bob_wait(&bob, &bob.ended, "the end of the call")) goto done;
    if (!bob_wait(&bob, &bob.recorded, "the call record")) goto done;

    print_records("alice", alice);
    print_records("bob", bob.client);

    /* Stop bob's callback (waits for a running invocation), then say goodbye. */
    if (!check("bob", "set_event_callback", callplus_client_set_event_callback(bob.client, NULL, NULL)))
        goto done;
    if (!check("alice", "disconnect", callplus_client_disconnect(alice))) goto done;
    /* The last events; NOT_CONNECTED once they are all taken (it comes as soon as the
     * stream has ended, so the long wait costs nothing when all is well). */
    for (;;) {
        callplus_result r = callplus_client_poll_event(alice, (uint32_t)wait_ms(), &event);
        if (r != CALLPLUS_RESULT_OK) {
            printf("alice: events done (%s)\n", callplus_result_message(r));
            break;
        }
        print_event("alice", event);
        callplus_event_free(event);
        event = NULL;
    }
    ok = 1;

done:
    callplus_call_session_free(current);
    callplus_event_free(event);
    callplus_string_free(call_id);
    callplus_client_free(alice);
    callplus_client_free(bob.client);
    pthread_cond_destroy(&bob.changed);
    pthread_mutex_destroy(&bob.lock);
    printf("two_party: %s\n", ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
}
