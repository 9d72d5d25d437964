/*
 * faultshim: a PKCS#11 module that forwards every call to a real module (SoftHSM2 in the
 * tests) and injects faults into a few of them, so the proxy's recovery paths can be tested
 * against the real token instead of a mock.
 *
 *   FAULTSHIM_REAL_MODULE  the module to forward to (default /usr/lib/softhsm/libsofthsm2.so)
 *   FAULTSHIM_CONTROL      a one-line control file, re-read on every wrapped call; when unset
 *                          the shim is a pure pass-through
 *
 * Control file words (several may share the line, e.g. "not_logged_in pin_incorrect"):
 *   none                  no fault
 *   device_error          crypto, find, open-session and session-info calls return
 *                         CKR_DEVICE_ERROR (0x30)
 *   device_removed        the same with CKR_DEVICE_REMOVED (0x32)
 *   token_not_present     the same with CKR_TOKEN_NOT_PRESENT (0xE0); C_GetTokenInfo fails
 *                         too and C_GetSlotList(tokenPresent) lists no slot
 *   session_invalid_once  the next crypto call returns CKR_SESSION_HANDLE_INVALID (0xB3), then
 *                         the shim rewrites the file to "none"
 *   not_logged_in_once    the same with CKR_USER_NOT_LOGGED_IN (0x101)
 *   not_logged_in         every crypto call returns CKR_USER_NOT_LOGGED_IN and C_GetSessionInfo
 *                         reports a public (not logged-in) session: the token forgot the login.
 *                         The next successful C_Login rewrites the file to "none", as a new
 *                         login is what brings such a token back
 *   hide_private          the token acts as for a session that is not logged in, without
 *                         failing any call: C_FindObjects returns no object whose CKA_PRIVATE
 *                         is true (keys and the proxy's disabled-key marks vanish from every
 *                         search) and C_GetSessionInfo reports a public session, as with
 *                         not_logged_in. Each handle the real module finds is checked with a
 *                         C_GetAttributeValue(CKA_PRIVATE) on the real module; one whose
 *                         attribute cannot be read is kept. Unlike not_logged_in, crypto calls
 *                         are forwarded and a login does not clear the word
 *   slow <ms>             sleep <ms> before forwarding each crypto call
 *   slow_find <ms>        sleep <ms> before forwarding each C_FindObjectsInit: a token whose
 *                         searches walk many objects (SoftHSM2's file store takes about 35 ms
 *                         per search with 2,000 objects)
 *   pin_incorrect         C_Login returns CKR_PIN_INCORRECT (0xA0) without reaching the token
 *   refuse_data_objects   C_CreateObject of a CKO_DATA object (CKA_CLASS = 0 in the template)
 *                         returns CKR_FUNCTION_FAILED (0x06) without reaching the token: a token
 *                         that refuses the proxy's disabled-key marks and creation records.
 *                         Other objects are created normally
 *   data_general_error <n> the next n C_CreateObject calls of a CKO_DATA object return
 *                         CKR_GENERAL_ERROR (0x05) without reaching the token, counting down
 *                         in the file ("data_general_error 1", then "none"): the transient
 *                         refusal SoftHSM2 was seen to give while other sessions read the token
 *   reuse_handles         handle numbers are reused, as some HSMs do: each handle the shim sees
 *                         destroyed by C_DestroyObject (while the word is set) is remembered, and
 *                         the next objects made by C_CreateObject, C_CopyObject, C_GenerateKey,
 *                         C_UnwrapKey or C_DeriveKey receive those numbers, oldest first
 *   hide_mechanism <hex>  a token without that mechanism (e.g. "hide_mechanism 0x1087" for
 *                         CKM_AES_GCM): C_GetMechanismList leaves it out, C_GetMechanismInfo
 *                         and every call that takes a mechanism (C_EncryptInit, C_DecryptInit,
 *                         C_GenerateKey, C_WrapKey, C_UnwrapKey) return CKR_MECHANISM_INVALID
 *                         (0x70) for it without reaching the token. The word may be repeated
 *                         (up to 8 mechanisms)
 *   vendor <name>         the token behaves like that vendor's HSM for AES-GCM (CKM_AES_GCM,
 *                         0x1087) encryption and tag failures; SoftHSM2 still does the crypto:
 *     vendor luna         Luna in FIPS mode. C_EncryptInit with an IV of length 0: the shim
 *                         makes a random IV (12 bytes when ulIvBits is 96, else 16, as Luna
 *                         firmware 7.9.3+ does), initialises SoftHSM2's encryption with it and
 *                         C_Encrypt returns ciphertext || tag || IV (the length query included).
 *                         An IV of any other length is refused with CKR_MECHANISM_PARAM_INVALID
 *                         (0x71), as a FIPS-mode HSM refuses caller IVs
 *     vendor cloudhsm     CloudHSM. C_EncryptInit with an all-zero IV buffer: the shim makes a
 *     vendor nshield      random IV of that length, writes it into the caller's buffer (at
 *                         C_EncryptInit) and encrypts under it. An IV that is not all zeros, or
 *                         of length 0, is refused with CKR_MECHANISM_PARAM_INVALID
 *                         C_Login on vendor cloudhsm takes a CloudHSM PIN, <user>:<password>:
 *                         the password alone reaches SoftHSM2; a PIN without ':' is refused
 *                         with CKR_PIN_INCORRECT (0xA0) without reaching the token.
 *                         Tag failures: SoftHSM2's CKR_GENERAL_ERROR (0x05) from C_Decrypt becomes
 *                         the vendor's code: CKR_ENCRYPTED_DATA_INVALID (0x40) for luna and
 *                         cloudhsm, CKR_FUNCTION_FAILED (0x06) for nshield.
 *                         docs/hsm-profiles.md says which of these facts are documented by the
 *                         vendor and which are not. C_DecryptInit is not changed: decryption
 *                         takes the IV the caller gives on every vendor
 *
 * Handle translation: the shim keeps a table from the handle numbers it handed out to the real
 * module's handles. A handle never remapped is passed through unchanged (SoftHSM2 itself never
 * reuses a number, so the two spaces do not collide). Every call taking an object handle
 * translates it (C_DestroyObject, C_GetObjectSize, C_Get/SetAttributeValue, C_CopyObject, the
 * *Init calls of encrypt/decrypt/sign/verify, C_DigestKey, C_WrapKey, C_UnwrapKey,
 * C_DeriveKey), and C_FindObjects translates its results back, so the caller only ever sees the
 * shim's numbers. Once the remembered number of a destroyed key is given to a new key, a stale
 * handle cached by the caller silently designates the new key. The table lives as long as the
 * process (C_Finalize does not clear it).
 *
 * Every C_Login call (refused or forwarded) appends one line to "<control>.logins", so a test
 * can count login attempts.
 *
 * "Crypto calls" are C_EncryptInit, C_Encrypt, C_DecryptInit, C_Decrypt and C_GenerateRandom.
 *
 * The shim exports only C_GetFunctionList. It deliberately does not export the PKCS#11 3.0
 * C_GetInterface: cryptoki tries that first and would otherwise bypass the wrapped list.
 *
 * Build: cc -shared -fPIC -O2 -o libfaultshim.so faultshim.c -ldl   (see build.sh)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- The PKCS#11 v2.40 types the shim needs. SoftHSM2 ships no headers, so they are written
 * out here. On Unix the structures are not packed and CK_ULONG is unsigned long. ---- */
typedef unsigned long CK_ULONG;
typedef unsigned char CK_BYTE;
typedef CK_BYTE CK_BBOOL;
typedef CK_ULONG CK_RV;
typedef CK_ULONG CK_FLAGS;
typedef CK_ULONG CK_SLOT_ID;
typedef CK_ULONG CK_SESSION_HANDLE;
typedef CK_ULONG CK_OBJECT_HANDLE;
typedef CK_ULONG CK_USER_TYPE;
typedef CK_ULONG CK_STATE;
typedef CK_RV (*CK_NOTIFY)(CK_SESSION_HANDLE, CK_ULONG, void *);
/* Only passed through by pointer: their layout does not matter here. */
/* Read by hide_mechanism: the mechanism type is the first member. */
typedef struct CK_MECHANISM {
    CK_ULONG mechanism;
    void *pParameter;
    CK_ULONG ulParameterLen;
} CK_MECHANISM;
typedef struct CK_TOKEN_INFO CK_TOKEN_INFO;

/* Read by refuse_data_objects to find CKA_CLASS in a template. */
typedef struct CK_ATTRIBUTE {
    CK_ULONG type;
    void *pValue;
    CK_ULONG ulValueLen;
} CK_ATTRIBUTE;
/* Read and rewritten by the vendor emulations (CK_GCM_PARAMS of PKCS#11 v2.40 with ulIvBits). */
typedef struct CK_GCM_PARAMS {
    CK_BYTE *pIv;
    CK_ULONG ulIvLen;
    CK_ULONG ulIvBits;
    CK_BYTE *pAAD;
    CK_ULONG ulAADLen;
    CK_ULONG ulTagBits;
} CK_GCM_PARAMS;
#define CKM_AES_GCM 0x1087UL

#define CKA_CLASS 0x00UL
#define CKA_PRIVATE 0x02UL
#define CKO_DATA 0x00UL

typedef struct {
    CK_BYTE major;
    CK_BYTE minor;
} CK_VERSION;

typedef struct {
    CK_SLOT_ID slotID;
    CK_STATE state;
    CK_FLAGS flags;
    CK_ULONG ulDeviceError;
} CK_SESSION_INFO;

#define CKR_OK 0x00UL
#define CKR_GENERAL_ERROR 0x05UL
#define CKR_FUNCTION_FAILED 0x06UL
#define CKR_HOST_MEMORY 0x02UL
#define CKR_DEVICE_ERROR 0x30UL
#define CKR_ENCRYPTED_DATA_INVALID 0x40UL
#define CKR_MECHANISM_PARAM_INVALID 0x71UL
#define CKR_BUFFER_TOO_SMALL 0x150UL
#define CKR_MECHANISM_INVALID 0x70UL
#define CKR_DEVICE_REMOVED 0x32UL
#define CKR_PIN_INCORRECT 0xA0UL
#define CKR_SESSION_HANDLE_INVALID 0xB3UL
#define CKR_TOKEN_NOT_PRESENT 0xE0UL
#define CKR_USER_ALREADY_LOGGED_IN 0x100UL
#define CKR_USER_NOT_LOGGED_IN 0x101UL
#define CKS_RO_PUBLIC_SESSION 0UL
#define CKS_RW_PUBLIC_SESSION 2UL
#define CKF_RW_SESSION 0x02UL

struct CK_FUNCTION_LIST;
typedef struct CK_FUNCTION_LIST **CK_FUNCTION_LIST_PTR_PTR;
/* Entries the shim never calls itself keep this generic type: every entry is one function
 * pointer, so only the order and the count (68) matter. */
typedef CK_RV (*ANY_FN)(void);

/* CK_FUNCTION_LIST as in PKCS#11 v2.40: a CK_VERSION, then 68 function pointers in this
 * exact order. */
struct CK_FUNCTION_LIST {
    CK_VERSION version;
    ANY_FN C_Initialize;
    ANY_FN C_Finalize;
    ANY_FN C_GetInfo;
    CK_RV (*C_GetFunctionList)(CK_FUNCTION_LIST_PTR_PTR);
    CK_RV (*C_GetSlotList)(CK_BBOOL, CK_SLOT_ID *, CK_ULONG *);
    ANY_FN C_GetSlotInfo;
    CK_RV (*C_GetTokenInfo)(CK_SLOT_ID, CK_TOKEN_INFO *);
    CK_RV (*C_GetMechanismList)(CK_SLOT_ID, CK_ULONG *, CK_ULONG *);
    CK_RV (*C_GetMechanismInfo)(CK_SLOT_ID, CK_ULONG, void *);
    ANY_FN C_InitToken;
    ANY_FN C_InitPIN;
    ANY_FN C_SetPIN;
    CK_RV (*C_OpenSession)(CK_SLOT_ID, CK_FLAGS, void *, CK_NOTIFY, CK_SESSION_HANDLE *);
    ANY_FN C_CloseSession;
    ANY_FN C_CloseAllSessions;
    CK_RV (*C_GetSessionInfo)(CK_SESSION_HANDLE, CK_SESSION_INFO *);
    ANY_FN C_GetOperationState;
    ANY_FN C_SetOperationState;
    CK_RV (*C_Login)(CK_SESSION_HANDLE, CK_USER_TYPE, CK_BYTE *, CK_ULONG);
    ANY_FN C_Logout;
    CK_RV (*C_CreateObject)(CK_SESSION_HANDLE, CK_ATTRIBUTE *, CK_ULONG, CK_OBJECT_HANDLE *);
    CK_RV (*C_CopyObject)(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, CK_ATTRIBUTE *, CK_ULONG, CK_OBJECT_HANDLE *);
    CK_RV (*C_DestroyObject)(CK_SESSION_HANDLE, CK_OBJECT_HANDLE);
    CK_RV (*C_GetObjectSize)(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, CK_ULONG *);
    CK_RV (*C_GetAttributeValue)(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, CK_ATTRIBUTE *, CK_ULONG);
    CK_RV (*C_SetAttributeValue)(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, CK_ATTRIBUTE *, CK_ULONG);
    CK_RV (*C_FindObjectsInit)(CK_SESSION_HANDLE, CK_ATTRIBUTE *, CK_ULONG);
    CK_RV (*C_FindObjects)(CK_SESSION_HANDLE, CK_OBJECT_HANDLE *, CK_ULONG, CK_ULONG *);
    ANY_FN C_FindObjectsFinal;
    CK_RV (*C_EncryptInit)(CK_SESSION_HANDLE, CK_MECHANISM *, CK_OBJECT_HANDLE);
    CK_RV (*C_Encrypt)(CK_SESSION_HANDLE, CK_BYTE *, CK_ULONG, CK_BYTE *, CK_ULONG *);
    ANY_FN C_EncryptUpdate;
    ANY_FN C_EncryptFinal;
    CK_RV (*C_DecryptInit)(CK_SESSION_HANDLE, CK_MECHANISM *, CK_OBJECT_HANDLE);
    CK_RV (*C_Decrypt)(CK_SESSION_HANDLE, CK_BYTE *, CK_ULONG, CK_BYTE *, CK_ULONG *);
    ANY_FN C_DecryptUpdate;
    ANY_FN C_DecryptFinal;
    ANY_FN C_DigestInit;
    ANY_FN C_Digest;
    ANY_FN C_DigestUpdate;
    CK_RV (*C_DigestKey)(CK_SESSION_HANDLE, CK_OBJECT_HANDLE);
    ANY_FN C_DigestFinal;
    CK_RV (*C_SignInit)(CK_SESSION_HANDLE, CK_MECHANISM *, CK_OBJECT_HANDLE);
    ANY_FN C_Sign;
    ANY_FN C_SignUpdate;
    ANY_FN C_SignFinal;
    CK_RV (*C_SignRecoverInit)(CK_SESSION_HANDLE, CK_MECHANISM *, CK_OBJECT_HANDLE);
    ANY_FN C_SignRecover;
    CK_RV (*C_VerifyInit)(CK_SESSION_HANDLE, CK_MECHANISM *, CK_OBJECT_HANDLE);
    ANY_FN C_Verify;
    ANY_FN C_VerifyUpdate;
    ANY_FN C_VerifyFinal;
    CK_RV (*C_VerifyRecoverInit)(CK_SESSION_HANDLE, CK_MECHANISM *, CK_OBJECT_HANDLE);
    ANY_FN C_VerifyRecover;
    ANY_FN C_DigestEncryptUpdate;
    ANY_FN C_DecryptDigestUpdate;
    ANY_FN C_SignEncryptUpdate;
    ANY_FN C_DecryptVerifyUpdate;
    CK_RV (*C_GenerateKey)(CK_SESSION_HANDLE, CK_MECHANISM *, CK_ATTRIBUTE *, CK_ULONG, CK_OBJECT_HANDLE *);
    ANY_FN C_GenerateKeyPair;
    CK_RV (*C_WrapKey)(CK_SESSION_HANDLE, CK_MECHANISM *, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE, CK_BYTE *, CK_ULONG *);
    CK_RV (*C_UnwrapKey)(CK_SESSION_HANDLE, CK_MECHANISM *, CK_OBJECT_HANDLE, CK_BYTE *, CK_ULONG, CK_ATTRIBUTE *, CK_ULONG, CK_OBJECT_HANDLE *);
    CK_RV (*C_DeriveKey)(CK_SESSION_HANDLE, CK_MECHANISM *, CK_OBJECT_HANDLE, CK_ATTRIBUTE *, CK_ULONG, CK_OBJECT_HANDLE *);
    ANY_FN C_SeedRandom;
    CK_RV (*C_GenerateRandom)(CK_SESSION_HANDLE, CK_BYTE *, CK_ULONG);
    ANY_FN C_GetFunctionStatus;
    ANY_FN C_CancelFunction;
    ANY_FN C_WaitForSlotEvent;
};

/* Catches a miscounted list at compile time: a version (padded to a pointer) + 68 pointers. */
_Static_assert(sizeof(struct CK_FUNCTION_LIST) == sizeof(void *) + 68 * sizeof(void *),
               "CK_FUNCTION_LIST must hold exactly 68 function pointers");

/* ---- Fault control ---- */

enum vendor { VENDOR_NONE, VENDOR_LUNA, VENDOR_CLOUDHSM, VENDOR_NSHIELD };

struct fault {
    enum vendor vendor;  /* vendor <name> */
    CK_RV device_rv;     /* device_error / device_removed / token_not_present, else 0 */
    int token_absent;    /* token_not_present */
    CK_RV once_rv;       /* *_once, else 0 */
    int not_logged_in;   /* not_logged_in (persistent) */
    int hide_private;    /* hide_private */
    long slow_ms;        /* slow <ms> */
    long slow_find_ms;   /* slow_find <ms> */
    int pin_incorrect;   /* pin_incorrect */
    int refuse_data;     /* refuse_data_objects */
    long data_errors;    /* data_general_error <n> */
    int reuse_handles;   /* reuse_handles */
    CK_ULONG hidden[8];  /* hide_mechanism <hex>, each */
    size_t n_hidden;
};

/* Serializes "read the file, then rewrite it to none" so a one-shot fault fires once even
 * when several worker threads call in at the same moment. */
static pthread_mutex_t control_lock = PTHREAD_MUTEX_INITIALIZER;

static void parse(const char *line, struct fault *f)
{
    char buf[256];
    char *save = NULL;
    snprintf(buf, sizeof buf, "%s", line);
    for (char *w = strtok_r(buf, " \t\r\n", &save); w; w = strtok_r(NULL, " \t\r\n", &save)) {
        if (!strcmp(w, "device_error")) {
            f->device_rv = CKR_DEVICE_ERROR;
        } else if (!strcmp(w, "device_removed")) {
            f->device_rv = CKR_DEVICE_REMOVED;
        } else if (!strcmp(w, "token_not_present")) {
            f->device_rv = CKR_TOKEN_NOT_PRESENT;
            f->token_absent = 1;
        } else if (!strcmp(w, "session_invalid_once")) {
            f->once_rv = CKR_SESSION_HANDLE_INVALID;
        } else if (!strcmp(w, "not_logged_in_once")) {
            f->once_rv = CKR_USER_NOT_LOGGED_IN;
        } else if (!strcmp(w, "not_logged_in")) {
            f->not_logged_in = 1;
        } else if (!strcmp(w, "hide_private")) {
            f->hide_private = 1;
        } else if (!strcmp(w, "slow")) {
            char *ms = strtok_r(NULL, " \t\r\n", &save);
            f->slow_ms = ms ? strtol(ms, NULL, 10) : 0;
        } else if (!strcmp(w, "slow_find")) {
            char *ms = strtok_r(NULL, " \t\r\n", &save);
            f->slow_find_ms = ms ? strtol(ms, NULL, 10) : 0;
        } else if (!strcmp(w, "pin_incorrect")) {
            f->pin_incorrect = 1;
        } else if (!strcmp(w, "refuse_data_objects")) {
            f->refuse_data = 1;
        } else if (!strcmp(w, "data_general_error")) {
            char *n = strtok_r(NULL, " \t\r\n", &save);
            f->data_errors = n ? strtol(n, NULL, 10) : 0;
        } else if (!strcmp(w, "reuse_handles")) {
            f->reuse_handles = 1;
        } else if (!strcmp(w, "vendor")) {
            char *v = strtok_r(NULL, " \t\r\n", &save);
            if (v && !strcmp(v, "luna"))
                f->vendor = VENDOR_LUNA;
            else if (v && !strcmp(v, "cloudhsm"))
                f->vendor = VENDOR_CLOUDHSM;
            else if (v && !strcmp(v, "nshield"))
                f->vendor = VENDOR_NSHIELD;
        } else if (!strcmp(w, "hide_mechanism")) {
            char *m = strtok_r(NULL, " \t\r\n", &save);
            if (m && f->n_hidden < sizeof f->hidden / sizeof f->hidden[0])
                f->hidden[f->n_hidden++] = strtoul(m, NULL, 16);
        }
        /* "none" and unknown words inject nothing. */
    }
}

/* Replaces the control file atomically (write + rename), so a reader never sees it half
 * written. */
static void rewrite_control(const char *path, const char *text)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.shim-tmp", path);
    FILE *out = fopen(tmp, "w");
    if (!out)
        return;
    fputs(text, out);
    fclose(out);
    rename(tmp, path);
}

/* Reads and parses the control file's first line; call with control_lock held. */
static void read_control(const char *path, struct fault *f)
{
    char line[256] = "";
    FILE *in = fopen(path, "r");
    if (in) {
        if (!fgets(line, sizeof line, in))
            line[0] = '\0';
        fclose(in);
    }
    parse(line, f);
}

/* Reads the current fault. With consume_once, a one-shot fault is returned and cleared. */
static void current_fault(struct fault *f, int consume_once)
{
    memset(f, 0, sizeof *f);
    const char *path = getenv("FAULTSHIM_CONTROL");
    if (!path || !*path)
        return;
    pthread_mutex_lock(&control_lock);
    read_control(path, f);
    if (f->once_rv) {
        if (consume_once)
            rewrite_control(path, "none\n");
        else
            f->once_rv = 0;
    }
    pthread_mutex_unlock(&control_lock);
}

static void count_login(void)
{
    const char *path = getenv("FAULTSHIM_CONTROL");
    if (!path || !*path)
        return;
    char log[4096];
    snprintf(log, sizeof log, "%s.logins", path);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
        (void)!write(fd, "login\n", 6);
        close(fd);
    }
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* The gate in front of every crypto call: slow first (a slow device is slow to fail too),
 * then the device fault, the lost login, the one-shot fault. */
static CK_RV crypto_gate(void)
{
    struct fault f;
    current_fault(&f, 1);
    if (f.slow_ms > 0)
        sleep_ms(f.slow_ms);
    if (f.device_rv)
        return f.device_rv;
    if (f.not_logged_in)
        return CKR_USER_NOT_LOGGED_IN;
    return f.once_rv;
}

/* The gate in front of find, open-session and session-info calls: device faults only. */
static CK_RV device_gate(void)
{
    struct fault f;
    current_fault(&f, 0);
    return f.device_rv;
}


/* ---- Handle translation (reuse_handles) ---- */

struct handle_map {
    CK_OBJECT_HANDLE shim;
    CK_OBJECT_HANDLE real;
};

static pthread_mutex_t handle_lock = PTHREAD_MUTEX_INITIALIZER;
static struct handle_map *handle_maps;   /* shim number -> real handle, for remapped objects */
static size_t handle_maps_len, handle_maps_cap;
static CK_OBJECT_HANDLE *freed;          /* destroyed numbers waiting for reuse, oldest first */
static size_t freed_len, freed_cap;

static void *grow(void *p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return p;
    size_t n = *cap ? *cap * 2 : 16;
    while (n < need)
        n *= 2;
    void *q = realloc(p, n * elem);
    if (!q) {
        fprintf(stderr, "faultshim: out of memory\n");
        abort();
    }
    *cap = n;
    return q;
}

/* The real handle behind a number the caller holds. Called with handle_lock held. */
static CK_OBJECT_HANDLE to_real_locked(CK_OBJECT_HANDLE h)
{
    for (size_t i = 0; i < handle_maps_len; i++)
        if (handle_maps[i].shim == h)
            return handle_maps[i].real;
    return h;
}

static CK_OBJECT_HANDLE to_real(CK_OBJECT_HANDLE h)
{
    pthread_mutex_lock(&handle_lock);
    CK_OBJECT_HANDLE r = to_real_locked(h);
    pthread_mutex_unlock(&handle_lock);
    return r;
}

/* The number the caller sees for a real handle. Called with handle_lock held. */
static CK_OBJECT_HANDLE to_shim_locked(CK_OBJECT_HANDLE real)
{
    for (size_t i = 0; i < handle_maps_len; i++)
        if (handle_maps[i].real == real)
            return handle_maps[i].shim;
    return real;
}

/* A new object was made with real handle *h: hand out a remembered number if there is one. */
static void adopt_new_handle(CK_OBJECT_HANDLE *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&handle_lock);
    if (freed_len > 0) {
        CK_OBJECT_HANDLE number = freed[0];
        memmove(freed, freed + 1, (freed_len - 1) * sizeof *freed);
        freed_len--;
        /* The number may still be mapped to the destroyed object: replace that entry. */
        size_t i = 0;
        while (i < handle_maps_len && handle_maps[i].shim != number)
            i++;
        if (i == handle_maps_len) {
            handle_maps = grow(handle_maps, &handle_maps_cap, handle_maps_len + 1, sizeof *handle_maps);
            handle_maps_len++;
        }
        handle_maps[i].shim = number;
        handle_maps[i].real = *h;
        *h = number;
    } else {
        *h = to_shim_locked(*h);
    }
    pthread_mutex_unlock(&handle_lock);
}

/* An object was destroyed: its number becomes reusable when reuse_handles is set; its
 * mapping (if any) is dropped, so the number alone no longer reaches the old object. */
static void forget_handle(CK_OBJECT_HANDLE number, int remember)
{
    pthread_mutex_lock(&handle_lock);
    for (size_t i = 0; i < handle_maps_len; i++) {
        if (handle_maps[i].shim == number) {
            handle_maps[i] = handle_maps[--handle_maps_len];
            break;
        }
    }
    if (remember) {
        freed = grow(freed, &freed_cap, freed_len + 1, sizeof *freed);
        freed[freed_len++] = number;
    }
    pthread_mutex_unlock(&handle_lock);
}

/* ---- The real module and the wrapped list ---- */

static struct CK_FUNCTION_LIST *real;
static struct CK_FUNCTION_LIST wrapped;
static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;

static CK_RV shim_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out);

static CK_RV shim_GetSlotList(CK_BBOOL token_present, CK_SLOT_ID *list, CK_ULONG *count)
{
    struct fault f;
    current_fault(&f, 0);
    if (f.token_absent && token_present && count) {
        /* Every slot is empty: a removed token is simply not listed. */
        *count = 0;
        return CKR_OK;
    }
    return real->C_GetSlotList(token_present, list, count);
}

static CK_RV shim_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO *info)
{
    struct fault f;
    current_fault(&f, 0);
    if (f.token_absent)
        return CKR_TOKEN_NOT_PRESENT;
    return real->C_GetTokenInfo(slot, info);
}

static CK_RV shim_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, void *app, CK_NOTIFY notify,
                              CK_SESSION_HANDLE *session)
{
    CK_RV rv = device_gate();
    return rv ? rv : real->C_OpenSession(slot, flags, app, notify, session);
}

static CK_RV shim_GetSessionInfo(CK_SESSION_HANDLE session, CK_SESSION_INFO *info)
{
    struct fault f;
    current_fault(&f, 0);
    if (f.device_rv)
        return f.device_rv;
    CK_RV rv = real->C_GetSessionInfo(session, info);
    if (rv == CKR_OK && (f.not_logged_in || f.hide_private) && info) {
        /* What a token that lost the login reports: a public session. */
        info->state = (info->flags & CKF_RW_SESSION) ? CKS_RW_PUBLIC_SESSION : CKS_RO_PUBLIC_SESSION;
    }
    return rv;
}

static CK_RV shim_Login(CK_SESSION_HANDLE session, CK_USER_TYPE user, CK_BYTE *pin, CK_ULONG len)
{
    struct fault f;
    count_login();
    current_fault(&f, 0);
    if (f.pin_incorrect)
        return CKR_PIN_INCORRECT;
    if (f.vendor == VENDOR_CLOUDHSM) {
        /* The crypto user's name is CloudHSM's business; SoftHSM2 knows only the password. */
        CK_BYTE *colon = pin ? memchr(pin, ':', len) : NULL;
        if (!colon)
            return CKR_PIN_INCORRECT;
        len -= (CK_ULONG)(colon + 1 - pin);
        pin = colon + 1;
    }
    CK_RV rv = real->C_Login(session, user, pin, len);
    if (f.not_logged_in && (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN)) {
        /* A new login is what brings a token that forgot it back. */
        pthread_mutex_lock(&control_lock);
        rewrite_control(getenv("FAULTSHIM_CONTROL"), "none\n");
        pthread_mutex_unlock(&control_lock);
    }
    return rv;
}

/* hide_mechanism: is `type` hidden by the current control file? */
static int mechanism_hidden(CK_ULONG type)
{
    struct fault f;
    current_fault(&f, 0);
    for (size_t i = 0; i < f.n_hidden; i++)
        if (f.hidden[i] == type)
            return 1;
    return 0;
}

static int mech_hidden(const CK_MECHANISM *mech)
{
    return mech && mechanism_hidden(mech->mechanism);
}

static CK_RV shim_GetMechanismList(CK_SLOT_ID slot, CK_ULONG *list, CK_ULONG *count)
{
    CK_RV rv = real->C_GetMechanismList(slot, list, count);
    if (rv != CKR_OK || !list || !count)
        return rv; /* a size query may over-count: PKCS#11 allows it */
    CK_ULONG kept = 0;
    for (CK_ULONG i = 0; i < *count; i++)
        if (!mechanism_hidden(list[i]))
            list[kept++] = list[i];
    *count = kept;
    return rv;
}

static CK_RV shim_GetMechanismInfo(CK_SLOT_ID slot, CK_ULONG type, void *info)
{
    if (mechanism_hidden(type))
        return CKR_MECHANISM_INVALID;
    return real->C_GetMechanismInfo(slot, type, info);
}

static CK_RV shim_FindObjectsInit(CK_SESSION_HANDLE session, CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    struct fault f;
    current_fault(&f, 0);
    if (f.slow_find_ms > 0)
        sleep_ms(f.slow_find_ms);
    CK_RV rv = device_gate();
    return rv ? rv : real->C_FindObjectsInit(session, tmpl, n);
}

/* ---- Vendor emulations (vendor <name>) ---- */

/* Luna: the IV each session's pending encryption appends after the tag. */
struct pending_iv {
    CK_SESSION_HANDLE session;
    CK_ULONG len;
    CK_BYTE iv[16];
};
static pthread_mutex_t pending_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pending_iv pending[256];
static size_t pending_len;

static void pending_drop(CK_SESSION_HANDLE session)
{
    pthread_mutex_lock(&pending_lock);
    for (size_t i = 0; i < pending_len; i++) {
        if (pending[i].session == session) {
            pending[i] = pending[--pending_len];
            break;
        }
    }
    pthread_mutex_unlock(&pending_lock);
}

static int pending_set(CK_SESSION_HANDLE session, const CK_BYTE *iv, CK_ULONG len)
{
    int ok = 0;
    pthread_mutex_lock(&pending_lock);
    if (pending_len < sizeof pending / sizeof pending[0]) {
        pending[pending_len].session = session;
        pending[pending_len].len = len;
        memcpy(pending[pending_len].iv, iv, len);
        pending_len++;
        ok = 1;
    }
    pthread_mutex_unlock(&pending_lock);
    return ok;
}

static int pending_get(CK_SESSION_HANDLE session, CK_BYTE *iv, CK_ULONG *len)
{
    int found = 0;
    pthread_mutex_lock(&pending_lock);
    for (size_t i = 0; i < pending_len && !found; i++) {
        if (pending[i].session == session) {
            *len = pending[i].len;
            memcpy(iv, pending[i].iv, *len);
            found = 1;
        }
    }
    pthread_mutex_unlock(&pending_lock);
    return found;
}

static int is_gcm(const CK_MECHANISM *mech)
{
    return mech && mech->mechanism == CKM_AES_GCM && mech->pParameter &&
           mech->ulParameterLen == sizeof(CK_GCM_PARAMS);
}

static int all_zero(const CK_BYTE *p, CK_ULONG n)
{
    for (CK_ULONG i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* C_EncryptInit of AES-GCM on an emulated vendor: the IV is made here, never by the caller. */
static CK_RV vendor_encrypt_init(enum vendor v, CK_SESSION_HANDLE session, CK_MECHANISM *mech,
                                 CK_OBJECT_HANDLE key)
{
    CK_GCM_PARAMS *given = mech->pParameter;
    CK_GCM_PARAMS params = *given;
    CK_MECHANISM m = *mech;
    CK_BYTE iv[16];
    CK_ULONG n;
    CK_RV rv;
    m.pParameter = &params;
    if (v == VENDOR_LUNA) {
        if (given->ulIvLen != 0)
            return CKR_MECHANISM_PARAM_INVALID;
        n = given->ulIvBits == 96 ? 12 : 16;
        if ((rv = real->C_GenerateRandom(session, iv, n)) != CKR_OK)
            return rv;
        params.pIv = iv;
        params.ulIvLen = n;
        params.ulIvBits = n * 8;
        rv = real->C_EncryptInit(session, &m, key);
        if (rv == CKR_OK && !pending_set(session, iv, n))
            return CKR_HOST_MEMORY;
        return rv;
    }
    n = given->ulIvLen;
    if (n == 0 || n > sizeof iv || !given->pIv || !all_zero(given->pIv, n))
        return CKR_MECHANISM_PARAM_INVALID;
    if ((rv = real->C_GenerateRandom(session, iv, n)) != CKR_OK)
        return rv;
    memcpy(given->pIv, iv, n);
    return real->C_EncryptInit(session, &m, key);
}

/* C_Encrypt with a Luna IV pending: SoftHSM2's ciphertext || tag, then the IV. */
static CK_RV encrypt_appending(CK_SESSION_HANDLE session, CK_BYTE *in, CK_ULONG in_len, CK_BYTE *out,
                               CK_ULONG *out_len, const CK_BYTE *iv, CK_ULONG n)
{
    CK_ULONG need = 0;
    CK_RV rv = real->C_Encrypt(session, in, in_len, NULL, &need);
    if (rv != CKR_OK) {
        pending_drop(session);
        return rv;
    }
    if (!out) {
        *out_len = need + n;
        return CKR_OK;
    }
    if (*out_len < need + n) {
        *out_len = need + n;
        return CKR_BUFFER_TOO_SMALL;
    }
    CK_ULONG got = *out_len - n;
    rv = real->C_Encrypt(session, in, in_len, out, &got);
    if (rv == CKR_BUFFER_TOO_SMALL) {
        *out_len = got + n;
        return rv;
    }
    pending_drop(session);
    if (rv != CKR_OK)
        return rv;
    memcpy(out + got, iv, n);
    *out_len = got + n;
    return CKR_OK;
}

/* The vendor's answer to a GCM tag that does not verify. */
static CK_RV vendor_bad_tag(enum vendor v)
{
    return v == VENDOR_NSHIELD ? CKR_FUNCTION_FAILED : CKR_ENCRYPTED_DATA_INVALID;
}

static CK_RV shim_EncryptInit(CK_SESSION_HANDLE session, CK_MECHANISM *mech, CK_OBJECT_HANDLE key)
{
    if (mech_hidden(mech))
        return CKR_MECHANISM_INVALID;
    CK_RV rv = crypto_gate();
    if (rv)
        return rv;
    /* A new operation replaces one that never reached C_Encrypt. */
    pending_drop(session);
    struct fault f;
    current_fault(&f, 0);
    if (f.vendor != VENDOR_NONE && is_gcm(mech))
        return vendor_encrypt_init(f.vendor, session, mech, to_real(key));
    return real->C_EncryptInit(session, mech, to_real(key));
}

static CK_RV shim_Encrypt(CK_SESSION_HANDLE session, CK_BYTE *in, CK_ULONG in_len, CK_BYTE *out,
                          CK_ULONG *out_len)
{
    CK_RV rv = crypto_gate();
    if (rv)
        return rv;
    CK_BYTE iv[16];
    CK_ULONG n = 0;
    if (out_len && pending_get(session, iv, &n))
        return encrypt_appending(session, in, in_len, out, out_len, iv, n);
    return real->C_Encrypt(session, in, in_len, out, out_len);
}

static CK_RV shim_DecryptInit(CK_SESSION_HANDLE session, CK_MECHANISM *mech, CK_OBJECT_HANDLE key)
{
    if (mech_hidden(mech))
        return CKR_MECHANISM_INVALID;
    CK_RV rv = crypto_gate();
    return rv ? rv : real->C_DecryptInit(session, mech, to_real(key));
}

static CK_RV shim_Decrypt(CK_SESSION_HANDLE session, CK_BYTE *in, CK_ULONG in_len, CK_BYTE *out,
                          CK_ULONG *out_len)
{
    CK_RV rv = crypto_gate();
    if (rv)
        return rv;
    rv = real->C_Decrypt(session, in, in_len, out, out_len);
    if (rv == CKR_GENERAL_ERROR) {
        struct fault f;
        current_fault(&f, 0);
        if (f.vendor != VENDOR_NONE)
            return vendor_bad_tag(f.vendor);
    }
    return rv;
}

static CK_RV shim_GenerateRandom(CK_SESSION_HANDLE session, CK_BYTE *out, CK_ULONG len)
{
    CK_RV rv = crypto_gate();
    return rv ? rv : real->C_GenerateRandom(session, out, len);
}

/* Is this template a CKO_DATA object? */
static int is_data_template(const CK_ATTRIBUTE *t, CK_ULONG n)
{
    for (CK_ULONG i = 0; t && i < n; i++) {
        if (t[i].type == CKA_CLASS && t[i].pValue && t[i].ulValueLen == sizeof(CK_ULONG)) {
            CK_ULONG cls;
            memcpy(&cls, t[i].pValue, sizeof cls);
            return cls == CKO_DATA;
        }
    }
    return 0;
}

/* Takes one of the data_general_error refusals, if any is left: counts the file down. */
static int take_data_error(void)
{
    const char *path = getenv("FAULTSHIM_CONTROL");
    if (!path || !*path)
        return 0;
    pthread_mutex_lock(&control_lock);
    struct fault f;
    memset(&f, 0, sizeof f);
    read_control(path, &f);
    int take = f.data_errors > 0;
    if (take) {
        char next[64];
        if (f.data_errors > 1)
            snprintf(next, sizeof next, "data_general_error %ld\n", f.data_errors - 1);
        else
            snprintf(next, sizeof next, "none\n");
        rewrite_control(path, next);
    }
    pthread_mutex_unlock(&control_lock);
    return take;
}

static CK_RV shim_CreateObject(CK_SESSION_HANDLE session, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                               CK_OBJECT_HANDLE *obj)
{
    struct fault f;
    current_fault(&f, 0);
    if (f.refuse_data && is_data_template(tmpl, n))
        return CKR_FUNCTION_FAILED;
    if (is_data_template(tmpl, n) && take_data_error())
        return CKR_GENERAL_ERROR;
    CK_RV rv = real->C_CreateObject(session, tmpl, n, obj);
    if (rv == CKR_OK)
        adopt_new_handle(obj);
    return rv;
}

static CK_RV shim_CopyObject(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE *tmpl,
                             CK_ULONG n, CK_OBJECT_HANDLE *out)
{
    CK_RV rv = real->C_CopyObject(session, to_real(obj), tmpl, n, out);
    if (rv == CKR_OK)
        adopt_new_handle(out);
    return rv;
}

static CK_RV shim_DestroyObject(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE obj)
{
    struct fault f;
    current_fault(&f, 0);
    CK_RV rv = real->C_DestroyObject(session, to_real(obj));
    if (rv == CKR_OK)
        forget_handle(obj, f.reuse_handles);
    return rv;
}

static CK_RV shim_GetObjectSize(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE obj, CK_ULONG *size)
{
    return real->C_GetObjectSize(session, to_real(obj), size);
}

static CK_RV shim_GetAttributeValue(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE obj,
                                    CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    return real->C_GetAttributeValue(session, to_real(obj), tmpl, n);
}

static CK_RV shim_SetAttributeValue(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE obj,
                                    CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    return real->C_SetAttributeValue(session, to_real(obj), tmpl, n);
}

/* Is the real object `h` private (CKA_PRIVATE true)? An unreadable attribute counts as not. */
static int is_private(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE h)
{
    CK_BBOOL priv = 0;
    CK_ATTRIBUTE a = {CKA_PRIVATE, &priv, sizeof priv};
    return real->C_GetAttributeValue(session, h, &a, 1) == CKR_OK && a.ulValueLen == sizeof priv && priv;
}

/* hide_private: C_FindObjects on the real module, keeping only public objects. The real search
 * is asked again until `max` public handles are found or it is exhausted, so a count below
 * `max` still means "no more objects" to the caller. */
static CK_RV find_public(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE *out, CK_ULONG max,
                         CK_ULONG *count)
{
    CK_ULONG kept = 0;
    while (kept < max) {
        CK_ULONG got = 0, base = kept;
        CK_RV rv = real->C_FindObjects(session, out + base, max - base, &got);
        if (rv != CKR_OK)
            return rv;
        if (got == 0)
            break;
        for (CK_ULONG i = 0; i < got; i++) {
            CK_OBJECT_HANDLE h = out[base + i];
            if (!is_private(session, h))
                out[kept++] = h;
        }
    }
    *count = kept;
    return CKR_OK;
}

static CK_RV shim_FindObjects(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE *out, CK_ULONG max,
                              CK_ULONG *count)
{
    struct fault f;
    current_fault(&f, 0);
    CK_RV rv = (f.hide_private && out && count) ? find_public(session, out, max, count)
                                                : real->C_FindObjects(session, out, max, count);
    if (rv == CKR_OK && out && count) {
        pthread_mutex_lock(&handle_lock);
        for (CK_ULONG i = 0; i < *count; i++)
            out[i] = to_shim_locked(out[i]);
        pthread_mutex_unlock(&handle_lock);
    }
    return rv;
}

static CK_RV shim_DigestKey(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key)
{
    return real->C_DigestKey(session, to_real(key));
}

static CK_RV shim_SignInit(CK_SESSION_HANDLE session, CK_MECHANISM *mech, CK_OBJECT_HANDLE key)
{
    return real->C_SignInit(session, mech, to_real(key));
}

static CK_RV shim_SignRecoverInit(CK_SESSION_HANDLE session, CK_MECHANISM *mech, CK_OBJECT_HANDLE key)
{
    return real->C_SignRecoverInit(session, mech, to_real(key));
}

static CK_RV shim_VerifyInit(CK_SESSION_HANDLE session, CK_MECHANISM *mech, CK_OBJECT_HANDLE key)
{
    return real->C_VerifyInit(session, mech, to_real(key));
}

static CK_RV shim_VerifyRecoverInit(CK_SESSION_HANDLE session, CK_MECHANISM *mech,
                                    CK_OBJECT_HANDLE key)
{
    return real->C_VerifyRecoverInit(session, mech, to_real(key));
}

static CK_RV shim_GenerateKey(CK_SESSION_HANDLE session, CK_MECHANISM *mech, CK_ATTRIBUTE *tmpl,
                              CK_ULONG n, CK_OBJECT_HANDLE *key)
{
    if (mech_hidden(mech))
        return CKR_MECHANISM_INVALID;
    CK_RV rv = real->C_GenerateKey(session, mech, tmpl, n, key);
    if (rv == CKR_OK)
        adopt_new_handle(key);
    return rv;
}

static CK_RV shim_WrapKey(CK_SESSION_HANDLE session, CK_MECHANISM *mech, CK_OBJECT_HANDLE wrapping,
                          CK_OBJECT_HANDLE key, CK_BYTE *out, CK_ULONG *out_len)
{
    if (mech_hidden(mech))
        return CKR_MECHANISM_INVALID;
    return real->C_WrapKey(session, mech, to_real(wrapping), to_real(key), out, out_len);
}

static CK_RV shim_UnwrapKey(CK_SESSION_HANDLE session, CK_MECHANISM *mech, CK_OBJECT_HANDLE unwrapping,
                            CK_BYTE *wrapped_key, CK_ULONG wrapped_len, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                            CK_OBJECT_HANDLE *key)
{
    if (mech_hidden(mech))
        return CKR_MECHANISM_INVALID;
    CK_RV rv = real->C_UnwrapKey(session, mech, to_real(unwrapping), wrapped_key, wrapped_len, tmpl,
                                 n, key);
    if (rv == CKR_OK)
        adopt_new_handle(key);
    return rv;
}

static CK_RV shim_DeriveKey(CK_SESSION_HANDLE session, CK_MECHANISM *mech, CK_OBJECT_HANDLE base,
                            CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *key)
{
    CK_RV rv = real->C_DeriveKey(session, mech, to_real(base), tmpl, n, key);
    if (rv == CKR_OK)
        adopt_new_handle(key);
    return rv;
}

/* Loads the real module once and builds the wrapped list: a copy of the real one (so
 * C_Initialize, C_Finalize and everything not listed here reach the real module unchanged,
 * arguments included) with the fault-injecting entries swapped in. */
static CK_RV load_real(void)
{
    CK_RV rv = CKR_OK;
    pthread_mutex_lock(&load_lock);
    if (!real) {
        const char *path = getenv("FAULTSHIM_REAL_MODULE");
        if (!path || !*path)
            path = "/usr/lib/softhsm/libsofthsm2.so";
        /* RTLD_LOCAL keeps the real module's symbols out of the global scope; the handle is
         * never closed, so the real module outlives any dlclose of the shim. */
        void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR) =
            lib ? (CK_RV(*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(lib, "C_GetFunctionList") : NULL;
        struct CK_FUNCTION_LIST *list = NULL;
        if (!get) {
            fprintf(stderr, "faultshim: cannot load %s: %s\n", path, dlerror());
            rv = CKR_GENERAL_ERROR;
        } else if ((rv = get(&list)) == CKR_OK) {
            wrapped = *list;
            wrapped.C_GetFunctionList = shim_GetFunctionList;
            wrapped.C_GetSlotList = shim_GetSlotList;
            wrapped.C_GetTokenInfo = shim_GetTokenInfo;
            wrapped.C_GetMechanismList = shim_GetMechanismList;
            wrapped.C_GetMechanismInfo = shim_GetMechanismInfo;
            wrapped.C_OpenSession = shim_OpenSession;
            wrapped.C_GetSessionInfo = shim_GetSessionInfo;
            wrapped.C_Login = shim_Login;
            wrapped.C_FindObjectsInit = shim_FindObjectsInit;
            wrapped.C_EncryptInit = shim_EncryptInit;
            wrapped.C_Encrypt = shim_Encrypt;
            wrapped.C_DecryptInit = shim_DecryptInit;
            wrapped.C_Decrypt = shim_Decrypt;
            wrapped.C_GenerateRandom = shim_GenerateRandom;
            wrapped.C_CreateObject = shim_CreateObject;
            wrapped.C_CopyObject = shim_CopyObject;
            wrapped.C_DestroyObject = shim_DestroyObject;
            wrapped.C_GetObjectSize = shim_GetObjectSize;
            wrapped.C_GetAttributeValue = shim_GetAttributeValue;
            wrapped.C_SetAttributeValue = shim_SetAttributeValue;
            wrapped.C_FindObjects = shim_FindObjects;
            wrapped.C_DigestKey = shim_DigestKey;
            wrapped.C_SignInit = shim_SignInit;
            wrapped.C_SignRecoverInit = shim_SignRecoverInit;
            wrapped.C_VerifyInit = shim_VerifyInit;
            wrapped.C_VerifyRecoverInit = shim_VerifyRecoverInit;
            wrapped.C_GenerateKey = shim_GenerateKey;
            wrapped.C_WrapKey = shim_WrapKey;
            wrapped.C_UnwrapKey = shim_UnwrapKey;
            wrapped.C_DeriveKey = shim_DeriveKey;
            real = list;
        }
    }
    pthread_mutex_unlock(&load_lock);
    return rv;
}

static CK_RV shim_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    if (!out)
        return 0x07UL; /* CKR_ARGUMENTS_BAD */
    CK_RV rv = load_real();
    if (rv == CKR_OK)
        *out = &wrapped;
    return rv;
}

/* The one exported symbol. */
__attribute__((visibility("default"))) CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    return shim_GetFunctionList(out);
}
