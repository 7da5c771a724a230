#!/usr/bin/env bash
# `make demo` (foundation stage): round-trips the protocol vectors through the `wxhub crypto`
# tool. Later stages run the whole stack against the simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -q -p wxhub-cli
wxhub=target/debug/wxhub

key=qPcxoOmy62xVVzwSvp2OSVqg6UAzcHO1ORqg8PHVi8q
echo "1. decrypt a real component_verify_ticket push (vector V6)"
body='<xml><AppId><![CDATA[wx805ef435fca595d2]]></AppId><Encrypt><![CDATA[oRoRDn1RFBlfwyYs33O4zkuMRjdhTZfrGj9H9tOYO3pIavNSeiJNQ1rE3vNKSVi0UsMaDynAenbfqLQoLIvYnbnTnmRcgnB3T2rs9PcFFyRP6RBgxce70xwDaeGNEdu+R+rQ7udMYiq727zYMOpjdW8ad1i76/NPv1Bh2en2+ifcBUe/zyh0SdHdC9NWX7cvjHsTYTuFQdQipkO+D6POEiB0OWMy+13Fue8KZtkabVRq2yEhcQnWf60cLtdEP+RgKP2mxi+ewPiblAC69+db04jRFpRYwLDgOJo/+sefoZVvdx7LQuAxsCrvi0cMuqsLxyt1I8/WLSxQH/zH0zfm1cdiETwczu52QLYu3ddXBasW8EeC09eIf5golfdvEvLRxOD5w/1s4oamzRzb3v9KQhpKPttGvizM1A44BWP5OODaJcoiqmNHI3iZFpI2gs2x2hOHpwimT4XKT4ANMpbgXg==]]></Encrypt></xml>'
echo "$body" | $wxhub crypto decrypt --token wxPlatformZjj20180424 --aes-key $key --appid wx805ef435fca595d2 \
  --timestamp 1524734617 --nonce 49717202 --msg-signature 2b36b2a70b4c59773d95b5a273a1a934a7eece8c

echo "2. encrypt a passive reply and decrypt it again"
reply='<xml><ToUserName><![CDATA[oUser]]></ToUserName><FromUserName><![CDATA[gh_3c884a361561]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[TESTCOMPONENT_MSG_TYPE_TEXT_callback]]></Content></xml>'
envelope=$(echo "$reply" | $wxhub crypto encrypt --token tok --aes-key $key --appid wx805ef435fca595d2 --timestamp 1700000000 --nonce demo)
echo "$envelope"
sig=$(sed -n 's/.*<MsgSignature><!\[CDATA\[\([0-9a-f]*\)\]\]>.*/\1/p' <<<"$envelope")
back=$(echo "$envelope" | $wxhub crypto decrypt --token tok --aes-key $key --appid wx805ef435fca595d2 --timestamp 1700000000 --nonce demo --msg-signature "$sig")
[ "$back" = "$reply" ] && echo "   round trip OK"

echo "3. a tampered signature is refused (exit 2, reason on stderr)"
if echo "$body" | $wxhub crypto decrypt --token wxPlatformZjj20180424 --aes-key $key --appid wx805ef435fca595d2 \
  --timestamp 1524734617 --nonce 49717202 --msg-signature 0000000000000000000000000000000000000000; then
  echo "   unexpected success"; exit 1
fi
echo "demo finished"
