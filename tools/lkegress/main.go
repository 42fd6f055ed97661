// lkegress starts one egress with LiveKit's unified StartEgress request through LiveKit's Go server SDK
// (the first SDK that sends it), follows it until it is active, stops it after a while, and follows it to its
// end. Each step prints one JSON line: {"step": ..., "info": EgressInfo as protobuf JSON} or {"step": ...,
// "error": {"code", "msg", "meta"}}; the exit status is 0 once the egress has ended (or was refused).
//
//	lkegress -url http://127.0.0.1:8080 -key K -secret S -seconds 4 < request.json
//
// request.json is a livekit.StartEgressRequest in protobuf JSON.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/twitchtv/twirp"
	"google.golang.org/protobuf/encoding/protojson"
)

func main() {
	url := flag.String("url", "", "the service's URL (http://host:port)")
	key := flag.String("key", os.Getenv("LIVEKIT_API_KEY"), "API key")
	secret := flag.String("secret", os.Getenv("LIVEKIT_API_SECRET"), "API secret")
	seconds := flag.Float64("seconds", 4, "how long to record once active")
	flag.Parse()
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	req := &livekit.StartEgressRequest{}
	if err := protojson.Unmarshal(raw, req); err != nil {
		fail(fmt.Errorf("request.json: %w", err))
	}
	client := lksdk.NewEgressClient(*url, *key, *secret)
	ctx := context.Background()
	info, err := client.StartEgress(ctx, req)
	if err != nil {
		refused("started", err)
		return
	}
	say("started", info)
	id := info.EgressId
	say("active", until(ctx, client, id, livekit.EgressStatus_EGRESS_ACTIVE))
	time.Sleep(time.Duration(*seconds * float64(time.Second)))
	stopped, err := client.StopEgress(ctx, &livekit.StopEgressRequest{EgressId: id})
	if err != nil {
		fail(err)
	}
	say("stopped", stopped)
	say("ended", until(ctx, client, id, livekit.EgressStatus_EGRESS_COMPLETE))
}

// until follows the egress (ListEgress by id) until it reaches `status` or ends otherwise.
func until(ctx context.Context, client *lksdk.EgressClient, id string, status livekit.EgressStatus) *livekit.EgressInfo {
	deadline := time.Now().Add(60 * time.Second)
	for {
		list, err := client.ListEgress(ctx, &livekit.ListEgressRequest{EgressId: id})
		if err != nil {
			fail(err)
		}
		if len(list.Items) != 1 {
			fail(fmt.Errorf("ListEgress of %s gave %d items", id, len(list.Items)))
		}
		info := list.Items[0]
		ended := info.Status >= livekit.EgressStatus_EGRESS_COMPLETE
		if info.Status == status || ended || time.Now().After(deadline) {
			return info
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func say(step string, info *livekit.EgressInfo) {
	text, err := protojson.Marshal(info)
	if err != nil {
		fail(err)
	}
	line, _ := json.Marshal(map[string]any{"step": step, "info": json.RawMessage(text)})
	fmt.Println(string(line))
}

func refused(step string, err error) {
	var terr twirp.Error
	if !errors.As(err, &terr) {
		fail(err)
	}
	line, _ := json.Marshal(map[string]any{"step": step, "error": map[string]any{
		"code": string(terr.Code()), "msg": terr.Msg(), "meta": terr.MetaMap()}})
	fmt.Println(string(line))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "lkegress:", err)
	os.Exit(1)
}
