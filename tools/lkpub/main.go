// Command lkpub joins a LiveKit room and publishes pre-encoded files
// (.ivf VP8/VP9/AV1, .ogg Opus, .h264) with an explicit track source.
// With -simulcast, its .ivf files are the layers (low to high) of one
// simulcast video track. With -kind, it joins as that kind of participant
// (its token's kind claim: agent, sip, ...), as audio routing tells them apart.
//
//	lkpub -url ws://127.0.0.1:7880 -key devkey -secret ... -room roomA \
//	      -identity screen1 -source screen_share -fps 15 red.ivf
package main

import (
	"encoding/binary"
	"flag"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
)

func main() {
	url := flag.String("url", "ws://127.0.0.1:7880", "LiveKit URL")
	key := flag.String("key", os.Getenv("LIVEKIT_API_KEY"), "API key")
	secret := flag.String("secret", os.Getenv("LIVEKIT_API_SECRET"), "API secret")
	room := flag.String("room", "", "room name")
	identity := flag.String("identity", "lkpub", "participant identity")
	source := flag.String("source", "", "camera|microphone|screen_share|screen_share_audio (default: by kind; screen_share puts .ogg files on screen_share_audio)")
	fps := flag.Float64("fps", 0, "video frame rate (set it for ffmpeg-made .ivf files)")
	simulcast := flag.Bool("simulcast", false, "the .ivf files are the low, medium and high layers of one video track")
	kindName := flag.String("kind", "standard", "participant kind: standard|ingress|egress|sip|agent|connector|bridge")
	flag.Parse()

	kind, ok := livekit.ParticipantInfo_Kind_value[strings.ToUpper(*kindName)]
	if !ok {
		log.Fatalf("unknown -kind %q", *kindName)
	}
	r, err := lksdk.ConnectToRoom(*url, lksdk.ConnectInfo{
		APIKey: *key, APISecret: *secret, RoomName: *room, ParticipantIdentity: *identity,
		ParticipantKind: lksdk.ParticipantKind(kind),
	}, lksdk.NewRoomCallback())
	if err != nil {
		log.Fatal(err)
	}
	defer r.Disconnect()

	done := make(chan string, len(flag.Args()))
	var layers []*lksdk.LocalTrack
	for _, f := range flag.Args() {
		f := f
		opts := []lksdk.ReaderSampleProviderOption{
			lksdk.ReaderTrackWithOnWriteComplete(func() { done <- f }),
		}
		if *fps > 0 && filepath.Ext(f) != ".ogg" {
			opts = append(opts, lksdk.ReaderTrackWithFrameDuration(time.Duration(float64(time.Second) / *fps)))
		}
		layered := *simulcast && filepath.Ext(f) == ".ivf"
		if layered {
			opts = append(opts, lksdk.ReaderTrackWithSampleOptions(lksdk.WithSimulcast("camera", layer(f, len(layers)))))
		}
		track, err := lksdk.NewLocalFileTrack(f, opts...)
		if err != nil {
			log.Fatal(err)
		}
		if layered {
			layers = append(layers, track)
			continue
		}
		// "" -> UNKNOWN, which the SDK maps to CAMERA (video) / MICROPHONE (audio).
		src := livekit.TrackSource(livekit.TrackSource_value[map[string]string{
			"camera": "CAMERA", "microphone": "MICROPHONE",
			"screen_share": "SCREEN_SHARE", "screen_share_audio": "SCREEN_SHARE_AUDIO"}[*source]])
		if src == livekit.TrackSource_SCREEN_SHARE && filepath.Ext(f) == ".ogg" {
			src = livekit.TrackSource_SCREEN_SHARE_AUDIO // audio file alongside a screen share
		}
		if _, err = r.LocalParticipant.PublishTrack(track, &lksdk.TrackPublicationOptions{
			Name: filepath.Base(f), Source: src,
		}); err != nil {
			log.Fatal(err)
		}
	}
	if len(layers) > 0 {
		if _, err := r.LocalParticipant.PublishSimulcastTrack(layers, &lksdk.TrackPublicationOptions{
			Name: "camera", Source: livekit.TrackSource_CAMERA,
		}); err != nil {
			log.Fatal(err)
		}
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	for left := len(flag.Args()); left > 0; {
		select {
		case f := <-done:
			log.Printf("finished %s", f)
			left--
		case <-sig:
			return
		}
	}
}

// layer is the simulcast layer the i-th .ivf file is, sized from its header.
func layer(file string, i int) *livekit.VideoLayer {
	header := make([]byte, 32)
	f, err := os.Open(file)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Read(header); err != nil {
		log.Fatal(err)
	}
	qualities := []livekit.VideoQuality{livekit.VideoQuality_LOW, livekit.VideoQuality_MEDIUM, livekit.VideoQuality_HIGH}
	if i >= len(qualities) {
		log.Fatalf("%s: at most %d simulcast layers", file, len(qualities))
	}
	return &livekit.VideoLayer{Quality: qualities[i], Width: uint32(binary.LittleEndian.Uint16(header[12:])),
		Height: uint32(binary.LittleEndian.Uint16(header[14:]))}
}
